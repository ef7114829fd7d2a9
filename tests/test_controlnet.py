"""ControlNet on the stream (tiny preset, random-weight ControlNets in its layout): one frame equals
diffusers' ControlNet img2img pipeline; each in-flight row is conditioned on its own frame's control
image; scales act live (0 switches a ControlNet off) without a rebuild; batched sessions equal each
session alone; bad options are named."""
from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionControlNetImg2ImgPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from reference import scheduler_on_stream_timesteps
from livediff.errors import ConfigError, InputError
from livediff.pipelines import StreamConfig, load_pipeline
from livediff.pipelines.batching import run_together
from livediff.pipelines.control import canny

SIZE = 64
TOLERANCE = 2e-5  # as tests/test_parity.py


def build(controlnet, **overrides):
    settings = dict(model="tiny", t_index_list=[20, 30, 40], cfg_type="self", width=SIZE, height=SIZE, device="cpu",
                    dtype="float32", controlnet=controlnet)
    settings.update(overrides)
    pipe = load_pipeline(**settings)
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5, delta=0.5)
    return pipe


def scene(i: int) -> torch.Tensor:
    """A panning texture with a bright square: frames with different edges."""
    texture = torch.rand(1, 3, SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(4))
    frame = texture[..., 3 * i:3 * i + SIZE].clone()
    frame[..., 20:36, 4 * i:4 * i + 16] = 1.0
    return frame


@pytest.mark.parametrize("t_index_list", [[10], [20, 40]])
def test_one_frame_matches_diffusers_controlnet_img2img(t_index_list, monkeypatch):
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    pipe = build(dict(model="random", preprocessor="none", scale=0.8), t_index_list=t_index_list, cfg_type="full")
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=3.0)
    image = scene(0)
    control = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape), generator=torch.Generator().manual_seed(42))
    ours = pipe(image, control=control)

    m = pipe.models
    scheduler = scheduler_on_stream_timesteps(pipe)
    reference = StableDiffusionControlNetImg2ImgPipeline(
        vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet, controlnet=m.controlnets[0],
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)(
        prompt="oil painting", negative_prompt="blurry", image=image, control_image=control, strength=1.0,
        num_inference_steps=len(t_index_list), guidance_scale=3.0, controlnet_conditioning_scale=0.8,
        generator=torch.Generator().manual_seed(42), output_type="pt").images
    assert (ours - reference).abs().max().item() < TOLERANCE
    pipe.reset()  # meaningful: another control image moves the output well beyond the tolerance (seen: 60x)
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape), generator=torch.Generator().manual_seed(42))
    assert (pipe(image, control=1 - control) - reference).abs().max().item() > 20 * TOLERANCE


def test_each_in_flight_row_gets_its_own_frames_control_image(monkeypatch):
    """Stream batch with ControlNet equals denoising each frame on its own with its own control image
    (float64), and differs from giving every row the latest frame's control image."""
    spec = dict(model="random", preprocessor="canny")
    frames = [scene(i) for i in range(5)]
    stream = build(spec, dtype="float64", cfg_type="initialize")
    outputs = [stream(f.double(), output="tensor") for f in frames]
    n = 3
    for k in range(n - 1, len(frames)):  # output k finishes frame k − (n − 1)
        alone = build(spec, dtype="float64", cfg_type="initialize")
        alone.stream.noise = stream.stream.noise.clone()
        source = frames[k - (n - 1)].double()
        expected = alone(source, output="tensor")  # warm-up: one frame through every stage on its own
        assert (outputs[k] - expected).abs().max().item() < 1e-9

    latest = build(spec, dtype="float64", cfg_type="initialize")
    original = latest.stream.calls

    def latest_for_all(x0, unet, guidance, noised=False, carried=None):
        if carried and latest.stream.carried:
            latest.stream.carried = {name: carried[name][-1:].expand_as(old)
                                     for name, old in latest.stream.carried.items()}
        return original(x0, unet, guidance, noised, carried)

    monkeypatch.setattr(latest.stream, "calls", latest_for_all)
    wrong = [latest(f.double(), output="tensor") for f in frames]
    assert max((w - o).abs().max().item() for w, o in zip(wrong, outputs)) > 1e-6


def test_scales_act_live_and_zero_switches_a_controlnet_off_without_a_rebuild():
    frames = [scene(i) for i in range(3)]
    plain = build(None)
    controlled = build([dict(model="random", preprocessor="tile"), dict(model="random", preprocessor="canny")])
    runner = controlled.runners.unet
    controlled.set_controlnet_scale(0, 0.0)
    controlled.set_controlnet_scale(1, 0)
    for frame in frames:
        torch.testing.assert_close(controlled(frame, output="tensor"), plain(frame, output="tensor"), rtol=0,
                                   atol=1e-6)
    controlled.set_controlnet_scale(1, 1.5)
    assert (controlled(scene(3), output="tensor") - plain(scene(3), output="tensor")).abs().max() > 1e-4
    assert controlled.runners.unet is runner
    with pytest.raises(ConfigError, match="controlnet index 2 is outside 0..1"):
        controlled.set_controlnet_scale(2, 1.0)
    with pytest.raises(ConfigError, match="controlnet scale 3"):
        controlled.set_controlnet_scale(0, 3)
    with pytest.raises(ConfigError, match="no ControlNet"):
        plain.set_controlnet_scale(0, 1.0)


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_sessions_with_their_own_scales_batched_equal_each_alone(mode):
    base = load_pipeline(model="tiny", mode=mode, t_index_list=[20, 30, 40], width=SIZE, height=SIZE, device="cpu",
                         dtype="float64", controlnet=dict(model="random", preprocessor="canny"))

    def sessions():
        a, b = base.new_session(), base.new_session(cfg_type="full", seed=5)
        a.prepare(prompt="oil painting", guidance_scale=1.4)
        b.prepare(prompt="claymation", guidance_scale=1.8)
        b.set_controlnet_scale(0, 0.4)
        return a, b

    together, alone = sessions(), sessions()
    for i in range(4):
        frame = scene(i).double()
        batched = [o.get() for o in run_together([p.frame_calls(frame, output="tensor") for p in together])]
        for got, pipe in zip(batched, alone):
            assert (got - pipe(frame, output="tensor")).abs().max().item() < 1e-9


def test_canny_gives_edges_of_host_pixels_as_uint8():
    pixels = torch.zeros((2, 3, 32, 32), dtype=torch.uint8)
    pixels[:, :, 8:24, 8:24] = 255
    edges = canny(pixels, 100, 200)
    assert edges.shape == (2, 1, 32, 32) and edges.dtype == torch.uint8 and set(edges.unique().tolist()) == {0, 255}
    assert edges[:, :, 16, 16].eq(0).all() and edges[:, :, 7:9, 16].amax(dim=-1).eq(255).all()  # the border only


def test_bad_controlnet_options_are_named_before_loading():
    with pytest.raises(ConfigError, match="'scribble' is not one of canny, tile, identity, none, depth, pose"):
        StreamConfig(model="tiny", controlnet=dict(model="random", preprocessor="scribble"))
    with pytest.raises(ConfigError, match="'depth' needs preprocessor_model"):
        StreamConfig(model="tiny", controlnet=dict(model="random", preprocessor="depth"))
    with pytest.raises(ConfigError, match="preprocessor_model is for preprocessors 'depth' and 'pose', not 'canny'"):
        StreamConfig(model="tiny", controlnet=dict(model="random", preprocessor_model="random"))
    with pytest.raises(ConfigError, match="controlnet scale 5"):
        StreamConfig(model="tiny", controlnet=dict(model="random", scale=5))
    with pytest.raises(ConfigError, match="unknown controlnet option.*'strength'"):
        StreamConfig(model="tiny", controlnet=dict(model="random", strength=1))
    with pytest.raises(ConfigError, match="txt2img"):
        StreamConfig(model="tiny", mode="txt2img", controlnet="random")
    with pytest.raises(ConfigError, match="low_threshold 200 is above high_threshold 100"):
        StreamConfig(model="tiny", controlnet=dict(model="random", low_threshold=200, high_threshold=100))


def test_a_none_preprocessor_needs_the_callers_control_image():
    pipe = build(dict(model="random", preprocessor="none"))
    with pytest.raises(InputError, match="pass its control image"):
        pipe(scene(0))
    with pytest.raises(ConfigError, match="no ControlNet"):
        build(None)(scene(0), control=scene(1))


def test_cli_options_build_controlnets_and_mismatches_are_named(tmp_path, capsys):
    from media import make_clip, probe

    from livediff.app.cli import main

    clip = make_clip(tmp_path / "in.mp4", n_frames=4, size=(64, 64), fps=4, audio=False)
    base = ["video", str(clip), "--model", "tiny", "--width", "64", "--height", "64", "--no-progress"]
    out = tmp_path / "out.mp4"
    assert main([*base, "-o", str(out), "--controlnet", "random", "--control-preprocessor", "canny",
                 "--controlnet", "random", "--control-scale", "0.5", "--control-scale", "0.2"]) == 0
    assert probe(out)["frames"] == 4
    assert main([*base, "-o", str(tmp_path / "bad.mp4"), "--control-scale", "0.5"]) != 0
    assert "--control-scale given 1 time(s) for 0 --controlnet" in capsys.readouterr().err


def test_a_depth_preprocessor_runs_its_model_on_the_device_batched_with_the_frames():
    """`depth` with a random-weight DPT: one run for the F frames of a call; the maps are the model's
    estimate at the frame size, scaled to [0,1]; the stream runs with them."""
    from livediff.pipelines.control import depth_map

    pipe = build(dict(model="random", preprocessor="depth", preprocessor_model="random"), frame_buffer_size=2)
    model = pipe.models.control_preprocessors[0]
    calls = []
    model.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    frames = [scene(0)[0], scene(1)[0]]
    out = pipe(frames, output="tensor")
    assert out.shape == (2, 3, SIZE, SIZE) and len(calls) == 1
    images = torch.stack(frames) * 2 - 1
    maps = depth_map(model, images)
    assert maps.shape == images.shape and maps.amin() == 0 and maps.amax() == 1
    assert not torch.equal(maps[0], maps[1])  # a real estimate per frame, not a constant


def test_engine_keys_name_the_controlnet_set_and_a_scale_is_not_part_of_them():
    from livediff.accelerators.engine_cache import weights_fingerprint
    from livediff.networks import UNetFunction

    one = build(dict(model="random", preprocessor="tile", scale=0.3))
    other_scale = build(dict(model="random", preprocessor="tile", scale=1.2))
    plain = build(None)

    def key(pipe):
        function = UNetFunction(pipe.models.unet, pipe.models.vae_scale_factor, pipe.models.controlnets)
        return function.variant(), weights_fingerprint(function), function.input_names

    assert key(one) == key(other_scale)  # scales are inputs: the same graph and engine serve both
    assert key(one) != key(plain)
    assert key(one)[0] == (("text_kv", 77), ("controlnets", 1)) and key(one)[2][-2:] == ("control_0", "control_scales")
    assert "encoder_hidden_states" in key(one)[2] and "encoder_hidden_states" not in key(plain)[2]
