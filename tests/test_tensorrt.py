"""TensorRT backend. Engine building and running need CUDA + TensorRT (marked `gpu`, skipped otherwise);
the optimisation profile logic is checked everywhere."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.base import RowRange
from livediff.networks import stream_networks
from livediff.pipelines.stream import stream_rows
from livediff.accelerators.tensorrt_backend import profile_shapes
from livediff.pipelines import StreamConfig, load_pipeline, shared_models

SIZE = 64
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs CUDA + TensorRT")


def tiny_networks(model: str = "tiny"):
    config = StreamConfig(model=model, width=SIZE, height=SIZE, device="cpu", dtype="float32")
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype)
    return stream_networks(models)


def test_unet_profile_spans_warm_up_to_steady_rows_and_the_resolution_range():
    unet = tiny_networks()["unet"]
    rows = stream_rows(steps=3, frames=2, cfg_type="initialize")
    profile = profile_shapes(unet, rows, ResolutionRange(64, 64, 128, 256), 96, 128, torch.float16)
    assert profile["sample"] == ((2, 4, 8, 8), (8, 4, 12, 16), (8, 4, 16, 32))
    assert profile["timestep"] == ((2,), (8,), (8,))
    assert "encoder_hidden_states" not in profile  # only ControlNets read the embeddings
    width = unet.text.widths[0]
    assert profile["text_key_0"] == ((2, 77, width), (8, 77, width), (8, 77, width))


def test_sdxl_unet_profile_covers_the_added_conditioning_and_its_key_names_the_family():
    unet = tiny_networks("tiny-sdxl")["unet"]
    profile = profile_shapes(unet, stream_rows(steps=2, frames=1, cfg_type="full"), ResolutionRange.static(SIZE, SIZE),
                             SIZE, SIZE, torch.float16)
    assert profile["text_embeds"] == ((1, 32), (4, 32), (4, 32))
    assert profile["time_ids"] == ((1, 6), (4, 6), (4, 6))
    assert unet.variant() == (("text_kv", 77), "sdxl") and tiny_networks()["unet"].variant() == (("text_kv", 77),)


def test_vae_profile_has_one_row_per_frame():
    decoder = tiny_networks()["vae_decoder"]
    profile = profile_shapes(decoder, RowRange(2, 2, 2), ResolutionRange.static(SIZE, SIZE), SIZE, SIZE,
                             torch.float16)
    assert profile["latents"] == ((2, 4, 8, 8),) * 3


def gpu_settings(cache_dir, **overrides):
    settings = dict(model="tiny", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE, device="cuda",
                    dtype="float16", accelerator="tensorrt")
    settings.update(overrides)
    return dict(accelerator_options={"cache_dir": cache_dir}, **settings)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_stream_matches_eager_and_reuses_its_engines(tmp_path):
    frames = [torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    outputs = {}
    for accelerator in ("eager", "tensorrt"):
        pipe = load_pipeline(**gpu_settings(tmp_path, accelerator=accelerator))
        pipe.prepare(prompt="oil painting", guidance_scale=1.5)
        outputs[accelerator] = [pipe(frame.cuda().half()).float() for frame in frames]
    for eager, trt in zip(outputs["eager"], outputs["tensorrt"]):
        assert (trt - eager).abs().max() < 2e-2  # fp16 engine vs fp16 PyTorch
    engines = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tensorrt-"))
    assert len(engines) == 3
    load_pipeline(**gpu_settings(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tensorrt-")) == engines


@pytest.mark.gpu
@needs_tensorrt
def test_rows_outside_the_profile_are_an_error(tmp_path):
    from livediff.errors import AcceleratorError

    pipe = load_pipeline(**gpu_settings(tmp_path))
    pipe.prepare(prompt="oil painting", guidance_scale=1.5)
    pipe(torch.rand(1, 3, SIZE, SIZE, device="cuda", dtype=torch.float16))
    pipe.set_guidance(cfg_type="full")  # doubles the rows beyond the engine profile
    with pytest.raises(AcceleratorError, match="outside the engine profile"):
        pipe(torch.rand(1, 3, SIZE, SIZE, device="cuda", dtype=torch.float16))


@pytest.mark.gpu
@needs_tensorrt
def test_a_corrupted_engine_is_rebuilt_not_loaded(tmp_path):
    load_pipeline(**gpu_settings(tmp_path))
    engine = next(tmp_path.glob("tensorrt-unet-*/model.plan"))
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    pipe = load_pipeline(**gpu_settings(tmp_path))
    pipe.prepare(prompt="oil painting")
    assert pipe(torch.rand(1, 3, SIZE, SIZE, device="cuda", dtype=torch.float16)).isfinite().all()
    assert next(tmp_path.glob("tensorrt-unet-*/model.plan")).read_bytes() != bytes(data)


def test_engines_for_several_sessions_have_a_wider_profile_and_their_own_cache_key():
    """Built for the UI's batches (`max_sessions`): the most rows grow, the steady rows stay; the cache
    key differs, so an engine for one session is never used for four."""
    from livediff.accelerators.tensorrt_backend import engine_key
    from livediff.pipelines.runners import build_target

    unet = tiny_networks()["unet"]
    keys, profiles = [], []
    for sessions in (1, 4):
        target = build_target(StreamConfig(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32",
                                           t_index_list=(20, 40), max_sessions=sessions))
        rows = target.rows_for(unet)
        profiles.append(profile_shapes(unet, rows, ResolutionRange.static(SIZE, SIZE), SIZE, SIZE, torch.float16))
        keys.append(engine_key(unet, target, rows, ResolutionRange.static(SIZE, SIZE), "float16", "10", "sm_89"))
    assert [p["sample"][2][0] for p in profiles] == [2, 8] and [p["sample"][1][0] for p in profiles] == [2, 2]
    assert keys[0].digest() != keys[1].digest()
