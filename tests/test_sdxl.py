"""SDXL on the tiny-sdxl preset: with accelerations off our pipeline equals diffusers' SDXL pipelines
(img2img and txt2img, LCM scheduler, same model and noise); the family is read from the model; the
added conditioning follows prompt changes and CFG layouts; the video pipeline runs on SDXL's layout.
SDXL graphs (plain, and banked with ControlNets) are in tests/test_graph_matrix.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from livediff.errors import ConfigError
from livediff.networks import added_conditions
from livediff.pipelines import load_pipeline
from livediff.pipelines.models import load_models
from livediff.pipelines.prompts import size_ids

SIZE = 64
TOLERANCE = 2e-5  # as tests/test_parity.py: max abs difference of output pixels in [0, 1], fp32 on CPU


def _components(pipe) -> dict:
    m = pipe.models
    return dict(vae=m.vae, text_encoder=m.text_encoder, text_encoder_2=m.text_encoder_2, tokenizer=m.tokenizer,
                tokenizer_2=m.tokenizer_2, unet=m.unet, scheduler=LCMScheduler.from_config(m.scheduler.config),
                force_zeros_for_empty_prompt=True, add_watermarker=False)


def _ours_and_reference_img2img(t_index_list, cfg_type, guidance_scale, negative_prompt, monkeypatch):
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    pipe = load_pipeline(model="tiny-sdxl", t_index_list=t_index_list, cfg_type=cfg_type, width=SIZE, height=SIZE,
                         device="cpu", dtype="float32")
    pipe.prepare(prompt="oil painting", negative_prompt=negative_prompt, guidance_scale=guidance_scale)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape), generator=torch.Generator().manual_seed(42))
    ours = pipe(image)
    reference = StableDiffusionXLImg2ImgPipeline(**_components(pipe), requires_aesthetics_score=False)(
        prompt="oil painting", negative_prompt=negative_prompt or None, image=image, strength=1.0,
        timesteps=[int(t) for t in pipe.schedule.timesteps], guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(42), output_type="pt").images
    return pipe, image, ours, reference


@pytest.mark.parametrize("t_index_list", [[10], [20, 40], [5, 25, 45]])
def test_full_cfg_matches_diffusers_sdxl_img2img(t_index_list, monkeypatch):
    pipe, image, ours, reference = _ours_and_reference_img2img(t_index_list, "full", 3.0, "blurry", monkeypatch)
    assert ours.shape == reference.shape == (1, 3, SIZE, SIZE)
    assert (ours - reference).abs().max().item() < TOLERANCE
    pipe.update_prompt("watercolor")  # the comparison is meaningful: another prompt moves the output
    pipe.reset()
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape), generator=torch.Generator().manual_seed(42))
    assert (pipe(image) - reference).abs().max().item() > 100 * TOLERANCE


def test_empty_negative_prompt_is_zero_conditioning_like_diffusers(monkeypatch):
    """SDXL's force_zeros_for_empty_prompt: our "" negative equals diffusers' default (no negative prompt)."""
    pipe, _, ours, reference = _ours_and_reference_img2img([20, 40], "full", 2.5, "", monkeypatch)
    assert (ours - reference).abs().max().item() < TOLERANCE
    assert not pipe.guidance.uncond.text.any() and not pipe.guidance.uncond.added[0].any()


def test_txt2img_matches_diffusers_sdxl_text_to_image():
    pipe = load_pipeline(model="tiny-sdxl", mode="txt2img", t_index_list=[0, 30], cfg_type="none", width=SIZE,
                         height=SIZE, device="cpu", dtype="float32")
    pipe.prepare(prompt="a red fox", guidance_scale=1.0)
    latents = torch.randn((1, *pipe.latent_shape), generator=torch.Generator().manual_seed(7))
    pipe._txt2img_noise = torch.Generator().manual_seed(7)
    step_noise = torch.randn((1, *pipe.latent_shape), generator=torch.Generator().manual_seed(11))
    pipe.stream.noise = torch.cat([torch.zeros_like(step_noise), step_noise])
    ours = np.asarray(pipe()).astype(np.float32) / 255
    reference = StableDiffusionXLPipeline(**_components(pipe))(
        prompt="a red fox", height=SIZE, width=SIZE, timesteps=[int(t) for t in pipe.schedule.timesteps],
        guidance_scale=1.0, latents=latents, generator=torch.Generator().manual_seed(11), output_type="np").images[0]
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 0.5 / 255 + 1e-5  # ours is rounded to uint8


def test_the_added_conditioning_is_per_prompt_and_size():
    pipe = load_pipeline(model="tiny-sdxl", width=SIZE, height=2 * SIZE, device="cpu", dtype="float32")
    pipe.prepare(prompt="oil painting", negative_prompt="blurry")
    cond = pipe.guidance.cond
    assert [t.shape for t in cond.added] == [(1, 32), (1, 6)]
    assert cond.added[1].tolist() == [list(size_ids(2 * SIZE, SIZE))] == [[128, 64, 0, 0, 128, 64]]
    pipe.update_prompt("watercolor")
    assert not torch.equal(pipe.guidance.cond.added[0], cond.added[0])  # the pooled text follows the prompt
    assert torch.equal(pipe.guidance.cond.added[1], cond.added[1])


def test_families_are_read_from_the_model():
    assert load_models("tiny-sdxl", device="cpu", dtype="float32").family == "sdxl"
    assert load_models("tiny", device="cpu", dtype="float32").family == "sd"
    unet = load_models("tiny-sdxl", device="cpu", dtype="float32").unet
    assert added_conditions(unet.config) == (("text_embeds", 32), ("time_ids", 6))


def test_saved_sdxl_folder_loads_as_sdxl_and_unknown_pipelines_are_named(tmp_path):
    models = load_models("tiny-sdxl", device="cpu", dtype="float32")
    folder = tmp_path / "tiny-sdxl"
    StableDiffusionXLPipeline(vae=models.vae, text_encoder=models.text_encoder, text_encoder_2=models.text_encoder_2,
                              tokenizer=models.tokenizer, tokenizer_2=models.tokenizer_2, unet=models.unet,
                              scheduler=models.scheduler, add_watermarker=False).save_pretrained(folder)
    loaded = load_models(str(folder), device="cpu", dtype="float32")
    assert loaded.family == "sdxl" and loaded.zero_empty_negative
    torch.testing.assert_close(loaded.unet.conv_in.weight, models.unet.conv_in.weight)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    with pytest.raises(ConfigError, match="FluxPipeline.*Stable Diffusion 1.x/2.x and SDXL"):
        load_models(str(folder), device="cpu", dtype="float32")


@pytest.mark.parametrize("cfg_type", ["self", "full"])
def test_video_pipeline_runs_sdxl_and_the_bank_changes_later_frames(cfg_type):
    def build(bank):
        pipe = load_pipeline(model="tiny-sdxl", mode="video", t_index_list=[20, 30, 40], cfg_type=cfg_type,
                             width=SIZE, height=SIZE, device="cpu", dtype="float32", bank=bank)
        pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5, delta=0.5)
        return pipe

    texture = torch.rand(3, SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(3))
    frames = [texture[:, :, 2 * i:2 * i + SIZE] for i in range(6)]
    plain = load_pipeline(model="tiny-sdxl", t_index_list=[20, 30, 40], cfg_type=cfg_type, width=SIZE, height=SIZE,
                          device="cpu", dtype="float32")
    plain.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5, delta=0.5)
    reference = [plain(f, output="tensor") for f in frames]
    off, on = build(False), build(dict(cache_interval=1, scene_cut_threshold=None))
    off_out = [off(f, output="tensor") for f in frames]
    on_out = [on(f, output="tensor") for f in frames]
    for a, b in zip(off_out, reference):  # no bank: exactly the image pipeline
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(on_out[0], off_out[0], rtol=0, atol=1e-5)  # nothing banked yet for frame 0
    assert (on_out[-1] - off_out[-1]).abs().max() > 1e-4


def test_sdxl_presets_have_the_sdxl_turbo_layout():
    from livediff.pipelines.presets import PRESETS

    layout = PRESETS["sdxl-turbo-random"].unet
    assert layout["transformer_layers_per_block"] == (1, 2, 10) and layout["cross_attention_dim"] == 2048
    assert layout["projection_class_embeddings_input_dim"] == PRESETS["sdxl-turbo-random"].text_2["projection_dim"] \
        + 6 * layout["addition_time_embed_dim"]
    reduced = PRESETS["sdxl-turbo-reduced"]
    assert reduced.unet["cross_attention_dim"] == reduced.text["hidden_size"] + reduced.text_2["hidden_size"]


def test_sdxl_vae_runs_in_float32_under_a_float16_stream():
    """SDXL's own VAE overflows in float16 (its `force_upcast`); SD's VAE and the UNet stay in float16."""
    sdxl = load_models("tiny-sdxl", device="meta", dtype="float16")
    assert sdxl.unet.dtype == torch.float16 and sdxl.vae.dtype == torch.float32
    assert load_models("tiny", device="meta", dtype="float16").vae.dtype == torch.float16
    assert load_models("tiny-sdxl", vae="tiny-taesd", device="meta", dtype="float16").vae.dtype == torch.float16
    pipe = load_pipeline(model="tiny-sdxl", width=SIZE, height=SIZE, device="meta", dtype="float16")
    latents = pipe.runners.encode({"images": torch.rand(1, 3, SIZE, SIZE, device="meta", dtype=torch.float16)})["latents"]
    assert latents.dtype == torch.float16  # the stream keeps its own precision
    assert pipe.runners.decode({"latents": latents})["images"].dtype == torch.float16


@pytest.mark.parametrize("model,vae,expected", [("tiny-sdxl", "madebyollin/taesd", "madebyollin/taesdxl"),
                                                ("tiny", "madebyollin/taesdxl", "madebyollin/taesd'")])
def test_a_tiny_vae_of_the_other_family_is_refused_by_name(model, vae, expected):
    with pytest.raises(ConfigError, match=expected):
        load_models(model, vae=vae, device="cpu", dtype="float32")


def test_the_video_command_takes_an_sdxl_model_unchanged(tmp_path):
    from media import make_clip, probe

    from livediff.app.cli import main

    clip = make_clip(tmp_path / "in.mp4", n_frames=6, size=(64, 64), fps=6, audio=False)
    out = tmp_path / "out.mp4"
    assert main(["video", str(clip), "-o", str(out), "--model", "tiny-sdxl", "--width", "64", "--height", "64",
                 "--prompt", "claymation", "--no-progress"]) == 0
    assert probe(out)["frames"] == 6


def test_single_files_are_sorted_by_their_tensor_names(tmp_path):
    """Without reading weights: SDXL's second text encoder has tensors no SD file has; refiners are refused."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES
    from safetensors.torch import save_file

    from livediff.pipelines.models import checkpoint_family

    def checkpoint(name: str, *keys: str):
        path = tmp_path / name
        save_file({key: torch.zeros(1) for key in ("model.diffusion_model.input_blocks.0.0.weight", *keys)}, path)
        return path

    assert checkpoint_family(checkpoint("xl.safetensors", CHECKPOINT_KEY_NAMES["xl_base"])) == "sdxl"
    assert checkpoint_family(checkpoint("sd.safetensors")) == "sd"
    with pytest.raises(ConfigError, match="refiner"):
        checkpoint_family(checkpoint("refiner.safetensors", CHECKPOINT_KEY_NAMES["xl_refiner"]))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ConfigError, match="broken.safetensors"):
        checkpoint_family(broken)


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_sdxl_sessions_batched_equal_each_session_alone(mode):
    """Shared runs stack every session's added conditioning with its rows (float64, 1e-9)."""
    from livediff.pipelines.batching import run_together

    base = load_pipeline(model="tiny-sdxl", mode=mode, t_index_list=[20, 30, 40], width=SIZE, height=SIZE,
                         device="cpu", dtype="float64")

    def sessions():
        a, b = base.new_session(), base.new_session(cfg_type="full", seed=5)
        a.prepare(prompt="oil painting", guidance_scale=1.4)
        b.prepare(prompt="claymation", negative_prompt="", guidance_scale=1.8)
        return a, b

    together, alone = sessions(), sessions()
    texture = torch.rand(1, 3, SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for i in range(4):
        frame = texture[..., 3 * i:3 * i + SIZE]
        batched = [o.get() for o in run_together([p.frame_calls(frame, output="tensor") for p in together])]
        for got, pipe in zip(batched, alone):
            assert (got - pipe(frame, output="tensor")).abs().max().item() < 1e-9


def test_token_merging_runs_on_sdxl_at_its_highest_attention_resolution():
    """SDXL has no attention at the full latent resolution: merging happens at the next level (32² at 512²)."""
    from livediff.pipelines.bank.layout import attention_layers
    from livediff.pipelines.token_merge import merge_level

    def run(ratio):
        pipe = load_pipeline(model="tiny-sdxl", mode="video", t_index_list=[20, 30], width=SIZE, height=SIZE,
                             device="cpu", dtype="float32", bank=False, token_merge_ratio=ratio)
        pipe.prepare(prompt="oil painting")
        return pipe, pipe(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)), output="tensor")

    pipe, merged = run(0.5)
    _, exact = run(0.0)
    assert merge_level(attention_layers(pipe.models.unet)) == 1
    assert merged.shape == exact.shape and (merged - exact).abs().max() > 1e-5
