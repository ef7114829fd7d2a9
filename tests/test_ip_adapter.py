"""IP-Adapter on the stream (tiny preset, a random-weight adapter and CLIP image encoder saved as the
original file layout): one frame equals diffusers' img2img with `load_ip_adapter` on the same file;
the style image and the scale act live without a rebuild (0, or no style image, is the plain model);
batched sessions with their own style images equal each alone, with and without the bank; the style
image is encoded once per change, not per frame; bad options are named."""
from __future__ import annotations

import copy

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image
from safetensors.torch import save_file

from reference import scheduler_on_stream_timesteps
from livediff.errors import ConfigError, InputError
from livediff.pipelines import load_pipeline
from livediff.pipelines.batching import run_together
from livediff.pipelines.ip_adapter import random_state_dict

SIZE = 64
TOLERANCE = 2e-5  # as tests/test_parity.py
RANDOM = dict(model="random", image_encoder="random", scale=0.8)


def build(ip_adapter=RANDOM, **overrides):
    settings = dict(model="tiny", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE, device="cpu",
                    dtype="float32", ip_adapter=ip_adapter)
    settings.update(overrides)
    pipe = load_pipeline(**settings)
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5, delta=0.5)
    return pipe


def picture(seed: int, size=(48, 40)) -> Image.Image:
    pixels = torch.rand(size[1], size[0], 3, generator=torch.Generator().manual_seed(seed))
    return Image.fromarray((pixels * 255).to(torch.uint8).numpy())


def frame(i: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100 + i))


@pytest.mark.parametrize("t_index_list", [[10], [20, 40]])
def test_one_frame_matches_diffusers_img2img_with_the_same_ip_adapter_file(t_index_list, tmp_path, monkeypatch):
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    probe = build(t_index_list=t_index_list)
    state = random_state_dict(probe.models.unet, probe.models.ip_adapter.encoder.config.projection_dim, seed=7)
    save_file({f"{group}.{k}": v for group, tensors in state.items() for k, v in tensors.items()},
              str(tmp_path / "ip-adapter.safetensors"))
    pipe = build(dict(model=str(tmp_path / "ip-adapter.safetensors"), image_encoder="random", scale=0.7),
                 t_index_list=t_index_list, cfg_type="full")
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=3.0)
    style, image = picture(1), frame(0)
    pipe.set_style_image(style)
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape), generator=torch.Generator().manual_seed(42))
    ours = pipe(image, output="tensor")

    m = pipe.models
    scheduler = scheduler_on_stream_timesteps(pipe)
    from transformers import CLIPImageProcessorPil

    encoder_size = m.ip_adapter.image_size
    reference_pipe = StableDiffusionImg2ImgPipeline(
        vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=copy.deepcopy(m.unet), scheduler=scheduler,
        safety_checker=None, requires_safety_checker=False, image_encoder=m.ip_adapter.encoder,
        feature_extractor=CLIPImageProcessorPil(size={"shortest_edge": encoder_size},
                                                crop_size={"height": encoder_size, "width": encoder_size}))
    reference_pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip-adapter.safetensors",
                                   image_encoder_folder=None)
    reference_pipe.set_ip_adapter_scale(0.7)
    reference = reference_pipe(prompt="oil painting", negative_prompt="blurry", image=image, ip_adapter_image=style,
                               strength=1.0, num_inference_steps=len(t_index_list), guidance_scale=3.0,
                               generator=torch.Generator().manual_seed(42), output_type="pt").images
    assert (ours - reference).abs().max().item() < TOLERANCE
    pipe.reset()  # meaningful: another style image moves the output well beyond the tolerance
    pipe.set_style_image(picture(2))
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape), generator=torch.Generator().manual_seed(42))
    assert (pipe(image, output="tensor") - reference).abs().max().item() > 20 * TOLERANCE


def test_style_and_scale_act_live_without_a_rebuild_and_zero_is_the_plain_model(monkeypatch):
    plain, styled = build(None), build()
    runner = styled.runners.unet
    for i in range(2):  # no style image yet: the image term is exactly zero
        torch.testing.assert_close(styled(frame(i), output="tensor"), plain(frame(i), output="tensor"), rtol=0, atol=0)
    encodes = []
    original = type(styled.models.ip_adapter.encoder).forward
    monkeypatch.setattr(type(styled.models.ip_adapter.encoder), "forward",
                        lambda self, *a, **k: encodes.append(1) or original(self, *a, **k))
    styled.set_style_image(picture(3))
    changed = [(styled(frame(i), output="tensor") - plain(frame(i), output="tensor")).abs().max().item()
               for i in range(2, 5)]
    assert min(changed) > 1e-4
    assert len(encodes) == 1, "the style image is encoded once per change, never per frame"
    styled.set_ip_adapter_scale(0.0)
    for i in range(5, 8):  # after the in-flight styled frames have left the stream: the plain model again
        out, expected = styled(frame(i), output="tensor"), plain(frame(i), output="tensor")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert styled.runners.unet is runner and len(encodes) == 1


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_sessions_with_their_own_style_images_batched_equal_each_alone(mode):
    base = build(mode=mode, dtype="float64", t_index_list=[20, 30, 40])

    def sessions():
        a, b = base.new_session(), base.new_session(cfg_type="full", seed=5)
        a.prepare(prompt="oil painting", guidance_scale=1.4)
        b.prepare(prompt="claymation", guidance_scale=1.8)
        a.set_style_image(picture(4))
        b.set_style_image(picture(5))
        b.set_ip_adapter_scale(1.3)
        return a, b

    together, alone = sessions(), sessions()
    outputs = []
    for i in range(4):
        f = frame(i).double()
        batched = [o.get() for o in run_together([p.frame_calls(f, output="tensor") for p in together])]
        for got, pipe in zip(batched, alone):
            assert (got - pipe(f, output="tensor")).abs().max().item() < 1e-9
        outputs.append(batched)
    assert (outputs[-1][0] - outputs[-1][1]).abs().max().item() > 1e-3


def test_the_banked_unet_takes_the_style_in_video_mode():
    plain, styled = build(None, mode="video"), build(mode="video")
    styled.set_style_image(picture(6))
    differences = [(styled(frame(i), output="tensor") - plain(frame(i), output="tensor")).abs().max().item()
                   for i in range(3)]
    assert differences[-1] > 1e-4


def test_bad_ip_adapter_options_are_named(tmp_path):
    with pytest.raises(ConfigError, match="ip_adapter scale 3"):
        build(dict(model="random", image_encoder="random", scale=3))
    with pytest.raises(ConfigError, match="unknown ip_adapter option.*'weight'"):
        build(dict(model="random", image_encoder="random", weight=1))
    with pytest.raises(ConfigError, match="is not a file"):
        build(dict(model="not-a-file.bin", image_encoder="random"))
    (tmp_path / "other.safetensors").write_bytes(b"")
    save_file({"unet.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="not an IP-Adapter weight file"):
        build(dict(model=str(tmp_path / "other.safetensors"), image_encoder="random"))
    with pytest.raises(ConfigError, match="no IP-Adapter"):
        build(None).set_style_image(picture(0))
    pipe = build()
    with pytest.raises(ConfigError, match="ip_adapter scale -1"):
        pipe.set_ip_adapter_scale(-1)
    with pytest.raises(InputError, match=r"\(3,H,W\)"):
        pipe.set_style_image(torch.zeros(2, 8, 8))


def test_with_a_controlnet_both_act_and_both_switch_off_to_the_plain_model():
    plain = build(None)
    both = build(controlnet=dict(model="random", preprocessor="tile", scale=0.8))
    both.set_style_image(picture(7))
    assert (both(frame(0), output="tensor") - plain(frame(0), output="tensor")).abs().max().item() > 1e-4
    both.set_ip_adapter_scale(0.0)
    both.set_controlnet_scale(0, 0.0)
    for i in range(1, 4):  # once the frames conditioned before the switch have left the stream
        out, expected = both(frame(i), output="tensor"), plain(frame(i), output="tensor")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_cli_style_options_restyle_a_video_and_mismatches_are_named(tmp_path, capsys):
    """`--style-image` goes through the video job (its resume identity names the picture)."""
    from media import make_clip, probe

    from livediff.app.cli import main

    clip = make_clip(tmp_path / "in.mp4", n_frames=4, size=(64, 64), fps=4, audio=False)
    style = tmp_path / "style.png"
    picture(8).save(style)
    base = ["video", str(clip), "--model", "tiny", "--width", "64", "--height", "64", "--no-progress"]
    out = tmp_path / "out.mp4"
    assert main([*base, "-o", str(out), "--ip-adapter", "random", "--image-encoder", "random",
                 "--style-image", str(style), "--style-scale", "0.9"]) == 0
    assert probe(out)["frames"] == 4
    assert main([*base, "-o", str(tmp_path / "bad.mp4"), "--style-image", str(style)]) != 0
    assert "--style-image and --image-encoder need --ip-adapter" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "bad.mp4"), "--ip-adapter", "random", "--image-encoder", "random",
                 "--style-image", str(tmp_path / "missing.png")]) != 0
    assert "cannot read image" in capsys.readouterr().err
