"""The streaming causal video pipeline (issue 16, item 2, and the video command of item 5).

The oracle is a hand-run of the existing, separately tested parts: `WanEncoderStream` → flow-matching
noise → `CausalWanTransformer` against its `RollingKVCache` → `finish_chunk` → `WanDecoderStream`,
chunk by chunk (float64, 1e-9). The pipeline must equal it frame for frame, in order, with the
sliding window, across a prompt change (re-anchoring) and through `flush()`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from livediff.errors import ConfigError, ModelNotAvailableError
from livediff.pipelines import load_pipeline
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.transformer import CausalWanTransformer
from livediff.pipelines.causal.vae import WanDecoderStream, WanEncoderStream
from livediff.pipelines.frames import host_frames
from media import clip_frame, make_clip

TOL = 1e-9
F64 = torch.float64
SIZE = 64
T_INDEX = [20, 40]
OPTIONS = dict(chunk_frames=2, sink_chunks=1, window_chunks=1)


def build(**overrides):
    settings = dict(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                    dtype="float64", t_index_list=T_INDEX, seed=7,
                    causal=dict(OPTIONS, sampler="euler"))  # `by_hand` is Euler; renoise: test_causal_sampler.py
    settings.update(overrides)
    return load_pipeline(**settings)


def frames(count: int, start: int = 0) -> list[np.ndarray]:
    return [clip_frame(i, SIZE, SIZE) for i in range(start, start + count)]


def text_of(pipe, prompt: str) -> torch.Tensor:
    """The prompt through the tokenizer and text encoder directly (tokens past the end zeroed)."""
    tokens = pipe.models.tokenizer([prompt], padding="max_length", max_length=pipe.models.tokenizer.model_max_length,
                                   truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.models.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    return hidden * tokens.attention_mask[..., None].to(hidden.dtype)


def flow_table(shift: float = 5.0):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(50)
    return scheduler


@torch.no_grad()
def by_hand(pipe, chunks: list[list[np.ndarray]], prompts: list[str], seed: int = 7) -> list[torch.Tensor]:
    """The chunks through the parts, one prompt per chunk; a new prompt starts a fresh cache (re-anchor).
    Returns each input frame's output in [0, 1], (3, H, W)."""
    models = pipe.models
    causal = CausalWanTransformer(models.transformer, CausalConfig(**OPTIONS))
    encoder, decoder = WanEncoderStream(models.vae), WanDecoderStream(models.vae)
    table = flow_table()
    sigmas = [float(table.sigmas[i]) for i in T_INDEX] + [0.0]
    timesteps = [float(table.timesteps[i]) for i in T_INDEX]
    mean = torch.tensor(models.vae.config.latents_mean, dtype=F64).view(1, -1, 1, 1, 1)
    std = torch.tensor(models.vae.config.latents_std, dtype=F64).view(1, -1, 1, 1, 1)
    noise = torch.Generator().manual_seed(seed)
    cache, previous, outs = None, None, []
    for chunk, prompt in zip(chunks, prompts):
        if prompt != previous:
            cache, text, previous = causal.new_cache(1, SIZE // 8, SIZE // 8), text_of(pipe, prompt), prompt
        video = torch.stack([host_frames(f, SIZE, SIZE, 1).to_model(torch.device("cpu"), torch.float64)[0] for f in chunk], dim=1)[None]
        latents = (encoder(video) - mean) / std
        x = (1 - sigmas[0]) * latents + sigmas[0] * torch.randn(latents.shape, generator=noise, dtype=F64)
        for s, t in enumerate(timesteps):
            x = x + (sigmas[s + 1] - sigmas[s]) * causal(x, t, text, cache)
        causal.finish_chunk(cache, clean=x, text=text)
        decoded = decoder(x * std + mean)
        outs += [(decoded[0, :, i] / 2 + 0.5).clamp(0, 1) for i in range(decoded.shape[2])]
    return outs


def run(pipe, inputs) -> list[torch.Tensor]:
    outs = []
    for frame in inputs:
        outs += pipe(frame, output="tensor")
    return outs


def close(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> bool:
    return len(ours) == len(theirs) and max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < TOL


# --- the pipeline is its parts, chunk by chunk -------------------------------------------------

def test_pipeline_equals_the_parts_run_by_hand_with_a_sliding_window():
    """4 chunks of 2 latent frames (5, 8, 8, 8 video frames) with 1 sink and a window of 1: the cache
    slides twice. Each frame comes out when its chunk is complete, all of them, in order."""
    pipe = build()
    pipe.prepare(prompt="claymation")
    clip = frames(29)
    returned, outs = [], []
    for frame in clip:
        got = pipe(frame, output="tensor")
        returned.append(len(got))
        outs += got
    assert [i for i, n in enumerate(returned) if n] == [4, 12, 20, 28]
    assert [n for n in returned if n] == [5, 8, 8, 8]
    chunks = [clip[:5], clip[5:13], clip[13:21], clip[21:29]]
    assert close(outs, by_hand(pipe, chunks, ["claymation"] * 4))
    assert pipe.cache.chunks == 4 and pipe.flush() == []


def test_flow_schedule_is_diffusers_table_and_its_euler_step():
    from livediff.pipelines.causal.pipeline import FlowSchedule

    schedule, table = FlowSchedule.build([0, 20, 49], 5.0), flow_table()
    assert schedule.sigmas == tuple(float(table.sigmas[i]) for i in (0, 20, 49))
    assert schedule.timesteps == tuple(float(table.timesteps[i]) for i in (0, 20, 49))
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(1, 4, 1, 2, 2, generator=g), torch.randn(1, 4, 1, 2, 2, generator=g)
    table._step_index = 20  # diffusers' own Euler step from table entry 20 to 21
    theirs = table.step(v, table.timesteps[20], x).prev_sample
    ours = x + (float(table.sigmas[21]) - float(table.sigmas[20])) * v
    assert (ours - theirs).abs().max() < 1e-6


def test_flush_returns_the_incomplete_chunk_and_ends_the_stream():
    pipe = build()
    pipe.prepare(prompt="claymation")
    clip = frames(9)  # a whole first chunk (5) and 4 of the next 8
    outs = run(pipe, clip)
    assert len(outs) == 5 and pipe.latency_frames == 4
    cache, addresses = pipe.cache, [t.data_ptr() for t in pipe.cache.tensors()]
    flushed = [f for f in pipe.flush()]
    assert len(flushed) == 4
    # the same as feeding the chunk completed with its last frame, and keeping its first 4 frames
    padded = clip[5:] + [clip[-1]] * 4
    assert close(outs + flushed, by_hand(pipe, [clip[:5], padded], ["claymation"] * 2)[:9])
    # the stream ended: the next frame starts a new one (a first chunk again, an empty cache, the seed's noise)
    assert pipe.cache.chunks == 0 and pipe.encoder.frames == 0 and pipe.latency_frames == 5
    # ... in the same cache tensors (a captured CUDA graph stays valid), the last stream's K/V masked out
    assert pipe.cache is cache and [t.data_ptr() for t in pipe.cache.tensors()] == addresses
    assert close(run(pipe, clip[:5]), outs[:5])


def test_prompt_change_reanchors_the_cache_and_keeps_the_video_streams():
    """Policy: update_prompt empties the K/V cache (sinks included, positions from 0) and keeps the VAE
    streams and the frames already collected; the new prompt applies from the chunk being collected."""
    pipe = build()
    pipe.prepare(prompt="claymation")
    clip = frames(21)
    outs = run(pipe, clip[:8])  # chunk 0 done, 3 frames of chunk 1 collected
    assert pipe.cache.filled.any()
    pipe.update_prompt("watercolour")
    assert pipe.cache.chunks == 0 and not pipe.cache.filled.any()
    assert pipe.encoder.frames == 5 and pipe.latency_frames == 5
    outs += run(pipe, clip[8:])
    chunks = [clip[:5], clip[5:13], clip[13:21]]
    assert close(outs, by_hand(pipe, chunks, ["claymation", "watercolour", "watercolour"]))
    # and it is a real change: keeping the old prompt gives other frames
    assert not close(outs, by_hand(pipe, chunks, ["claymation"] * 3))


def test_pil_and_array_frames_come_back_as_they_came_in():
    pipe = build(dtype="float32", causal=dict(chunk_frames=1))
    pipe.prepare(prompt="")
    from PIL import Image

    out = pipe(Image.fromarray(frames(1)[0]))
    assert len(out) == 1 and isinstance(out[0], Image.Image) and out[0].size == (SIZE, SIZE)
    assert [pipe(f) for f in frames(3)] == [[], [], []]
    last = pipe(frames(1)[0])
    assert len(last) == 4 and all(f.dtype == np.uint8 and f.shape == (SIZE, SIZE, 3) for f in last)


# --- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    (dict(causal=dict(chunk_frames=0)), "causal chunk_frames 0 must be an integer in 1..16"),
    (dict(causal=dict(window_chunks=100)), "causal window_chunks 100 must be an integer in 1..64"),
    (dict(causal=dict(flow_shift=0)), "causal flow_shift 0 is outside"),
    (dict(causal=dict(chunks=2)), "unknown causal option(s) 'chunks'"),
    (dict(causal=3), "causal 3 must be a dict of causal-video options"),
    (dict(mode="video", model="tiny"), "causal is a mode 'causal-video' option"),
    (dict(width=72), "width 72 must be a multiple of 16 in mode 'causal-video'"),
    (dict(bank=dict(cache_interval=2)), "bank is a mode 'video' option"),
    (dict(controlnet="random"), "mode 'causal-video' does not support controlnet"),
    # tensorrt is accepted (test_causal_tensorrt.py): only the guidance is named
    (dict(accelerator="tensorrt", cfg_type="full"), "mode 'causal-video' does not support cfg_type 'full'"),
    (dict(frame_buffer_size=2), "frame_buffer_size other than 1"),
    (dict(model="no-such-model"), "Unknown causal video model 'no-such-model'"),
])
def test_bad_options_are_named_before_any_weights_load(overrides, words, monkeypatch):
    from livediff.pipelines.causal import models

    if overrides.get("model") != "no-such-model":
        monkeypatch.setattr(models, "load_causal_models", lambda *a: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        build(**overrides)


def test_guidance_is_refused_and_an_offline_hub_model_is_one_sentence(monkeypatch):
    pipe = build()
    with pytest.raises(ConfigError, match="without classifier-free guidance"):
        pipe.prepare(prompt="a", negative_prompt="blurry")
    with pytest.raises(ConfigError, match="call prepare"):
        pipe(frames(1)[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="not in the local Hugging Face cache") as caught:
        build(model="nobody-here/wan-missing-model")
    # the weightless model it suggests is one this mode runs (`--model tiny` is an image model)
    assert "use --model tiny-wan-causal (model='tiny-wan-causal' in Python) to try" in str(caught.value)


# --- the video command ------------------------------------------------------------------------

def test_video_command_with_causal_video_keeps_every_frame(tmp_path):
    from livediff.app.cli import main
    from livediff.app.video.reader import count_video_packets

    clip = make_clip(tmp_path / "in.mp4", n_frames=11, size=(64, 64), audio=False)
    out = tmp_path / "out.mp4"
    code = main(["video", str(clip), "-o", str(out), "--mode", "causal-video", "--model", "tiny-wan-causal",
                 "--width", "64", "--height", "64", "--prompt", "claymation", "--no-progress", "--chunk-frames", "2"])
    assert code == 0
    assert count_video_packets(out) == 11  # 5 + 8 − 2 held frames, flushed at the end


def test_chunk_options_outside_causal_video_are_refused(tmp_path, capsys):
    from livediff.app.cli import main

    clip = make_clip(tmp_path / "in.mp4", n_frames=2, size=(64, 64), audio=False)
    code = main(["video", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", "tiny", "--window-chunks", "2"])
    assert code == 2 and "--window-chunks is a --mode causal-video option" in capsys.readouterr().err


class ChunkEcho:
    """Returns its input frames late, three at a time (a chunked processor), as the job must cope with."""

    def __init__(self):
        self.held: list[np.ndarray] = []

    def __call__(self, rgb):
        self.held.append(rgb)
        if len(self.held) < 3:
            return []
        out, self.held = self.held, []
        return out

    def flush(self):
        out, self.held = self.held, []
        return out

    def reset(self):
        self.held = []


def test_video_job_writes_late_frames_in_order_and_flushes_the_rest(tmp_path):
    from livediff.app.video.job import process_video
    from livediff.app.video.options import JobOptions
    from media import read_frames

    clip = make_clip(tmp_path / "in.mp4", n_frames=8, size=(64, 48), audio=False)
    result = process_video(clip, tmp_path / "out.mp4", ChunkEcho, JobOptions(progress=False, quiet=True,
                                                                             segment_frames=4))
    got = read_frames(tmp_path / "out.mp4")
    assert result.frames == len(got) == 8
    for i, frame in enumerate(got):  # each output frame is its own input frame (lossy codec: close)
        diffs = [np.abs(frame.astype(int) - clip_frame(j, 64, 48).astype(int)).mean() for j in range(8)]
        assert int(np.argmin(diffs)) == i


# --- on the device: noise drawn there, float32 where the model class keeps it (issue 26, defect 7) ------

def test_a_chunk_copies_nothing_from_the_host_and_the_kept_modules_stay_float32():
    """`meta` stands in for the GPU (`DeviceTraffic` counts host→device copies). A whole chunk (encode,
    two renoise stages, decode, cache write) drew its noise on the host and copied it over twice; now
    nothing crosses. The transformer runs float16 except diffusers' `_keep_in_fp32_modules` (rotary
    table, time embedder, `scale_shift_table`, norms), and the chunk still runs with the mixed dtypes."""
    from benchmarks.device_traffic import DeviceTraffic

    pipe = build(device="meta", dtype="float16", causal=dict(OPTIONS, sampler="renoise"))
    pipe.text = torch.zeros(1, pipe.text_tokens, 16, dtype=torch.float16, device="meta")
    for _ in range(3):  # the stream's first chunk, then two steady ones
        frames = pipe.chunk_video_frames
        with DeviceTraffic("meta") as traffic:
            clean, decoded = pipe.restyle(torch.zeros(1, 3, frames, SIZE, SIZE, device="meta"))
            pipe.finish_chunk(clean)
        assert traffic.copies == [] and decoded.shape == (1, 3, frames, SIZE, SIZE)
    transformer = pipe.models.transformer
    kept = set(transformer._keep_in_fp32_modules)
    dtypes = {name: t.dtype for name, t in (*transformer.named_parameters(), *transformer.named_buffers())}
    float32 = {name for name, dtype in dtypes.items() if dtype == torch.float32}
    assert float32 == {name for name in dtypes if kept & set(name.split("."))}
    assert {part for name in float32 for part in name.split(".")} >= kept - {"norm1", "norm3"}  # affine-free norms
    assert set(dtypes.values()) == {torch.float16, torch.float32} and pipe.dtype == torch.float16


def test_the_mixed_precision_transformer_restyles_a_chunk_in_bfloat16_like_float32():
    """The kept float32 modules next to bfloat16 weights compute on real values (CPU has bfloat16, not
    float16 matmuls): the first chunk's frame is close to the float32 stream's."""
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        pipe = build(dtype=dtype, causal=dict(OPTIONS, chunk_frames=1))
        pipe.prepare(prompt="a lighthouse")
        outputs[dtype] = run(pipe, frames(1))
    assert str(pipe.models.transformer.scale_shift_table.dtype) == "torch.float32" and pipe.dtype == torch.bfloat16
    (full,), (half,) = outputs["float32"], outputs["bfloat16"]
    assert torch.isfinite(half).all() and float((half.float() - full).abs().max()) < 0.02  # 0.0024 here
