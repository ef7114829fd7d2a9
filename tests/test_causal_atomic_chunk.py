"""A causal video chunk is all or nothing (`pipelines.causal.rollback`): when its computation raises
midway (here a KeyboardInterrupt, as Ctrl-C gives, from the transformer or the VAE decoder on chosen
calls), the chunk's frames stay collected and the VAE streams, the noise and the K/V cache are as
before it, so continuing the stream gives exactly the frames of an uninterrupted run (float64, 1e-9),
none lost, none repeated.

The oracle is the same pipeline run without the faults: 14 frames streamed in chunks of 1 latent frame
(1, 4, 4, 4 video frames; one sink and a window of one, so the window slides on the third chunk), the
last 1 flushed; the "renoise" sampler, so each chunk draws noise twice.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from livediff.pipelines.causal.vae import WanDecoderStream, WanEncoderStream
from test_causal_pipeline import OPTIONS, build, close, frames, run

CLIP = frames(14)
CAUSAL = dict(OPTIONS, chunk_frames=1, sampler="renoise")


def pipeline():
    pipe = build(causal=CAUSAL)
    pipe.prepare(prompt="claymation")
    return pipe


@lru_cache(maxsize=1)
def uninterrupted() -> tuple[torch.Tensor, ...]:
    """The oracle (computed before any fault is set: the pipelines share their networks)."""
    pipe = pipeline()
    return tuple(run(pipe, CLIP) + pipe.flush())


def fail_on_calls(monkeypatch, module: torch.nn.Module, calls: set[int]) -> list[int]:
    """`module` raises KeyboardInterrupt on its forward calls numbered in `calls` (from 1, the raising ones
    counted) and works otherwise; returns the call counter."""
    count, forward = [0], module.forward

    def faulty(*args, **kwargs):
        count[0] += 1
        if count[0] in calls:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(module, "forward", faulty)
    return count


def test_interrupted_chunks_are_computed_again_as_if_never_interrupted(monkeypatch):
    """A chunk runs the transformer at its 2 stages (T1, T2), decodes (D), then runs the transformer on its
    clean result and commits that to the K/V cache (T3). Faults, counting every call, the raising ones too:
    transformer call 2 (chunk 0's T2: the first frame encoded, noise drawn, keys/values staged), transformer
    call 8 (chunk 1's T3, after decoding), decoder call 4 (chunk 2, the window's first slide), and decoder
    call 7 (the flush: it raises, and the next flush finishes the stream)."""
    expected = list(uninterrupted())
    pipe = pipeline()
    transformer = fail_on_calls(monkeypatch, pipe.causal.model, {2, 8})
    decoder = fail_on_calls(monkeypatch, pipe.models.vae.decoder, {4, 7})
    outs, interrupted = [], []
    for i, frame in enumerate(CLIP):
        streams = [(s, *s.snapshot()) for s in (pipe.encoder, pipe.decoder)]
        chunks, noise = pipe.cache.chunks, pipe._noise.get_state()
        try:
            outs += pipe(frame, output="tensor")
        except KeyboardInterrupt:
            interrupted.append(i)
            # the chunk is held, whole, and everything it advanced is as before it
            assert pipe.latency_frames == 0 and pipe.chunks == pipe.cache.chunks == chunks
            assert all(s.cache is cache and s.snapshot()[1] == count for s, cache, count in streams)
            assert torch.equal(pipe._noise.get_state(), noise) and not pipe.cache._staged
    assert interrupted == [0, 4, 8] and pipe.latency_frames == 3
    with pytest.raises(KeyboardInterrupt):
        pipe.flush()
    assert pipe.latency_frames == 3 and pipe.encoder.frames == 13  # the stream and its frame are kept
    outs += pipe.flush()
    # 5 chunks done (3 transformer calls, 1 decoder call each) and the failed tries: T1 T2 | T1 T2 D T3 | T1 T2 D | T1 T2 D
    assert (transformer[0], decoder[0]) == (5 * 3 + 9, 5 + 3)
    assert len(outs) == len(CLIP) == len(expected)
    assert close(outs, expected)


def test_a_chunk_finished_before_another_one_raised_comes_out_with_the_next_call(monkeypatch):
    """The decoder fails 5 times in a row, so frames pile up: at frame 5 the call finishes chunk 0 and then
    chunk 1 raises. Chunk 0's frame is not lost: the next call returns it before chunk 1's."""
    expected = list(uninterrupted())[:9]  # chunks 0-2: what a stream of these 9 frames gives
    pipe = pipeline()
    fail_on_calls(monkeypatch, pipe.models.vae.decoder, {1, 2, 3, 4, 5, 7})
    outs, returned = [], []
    for frame in CLIP[:9]:
        try:
            got = pipe(frame, output="tensor")
        except KeyboardInterrupt:
            got = None
        returned.append(None if got is None else len(got))
        outs += got or []
    assert returned == [None] * 6 + [5, 0, 4]
    assert close(outs + pipe.flush(), expected)


@pytest.mark.parametrize("direction", ["encoder", "decoder"])
def test_a_vae_stream_call_that_raises_leaves_its_cache_list_untouched(monkeypatch, direction):
    """A stream call works on a new cache list and publishes it at the end, so one raising midway (on its
    second piece / latent frame) leaves the published list as it was, the same tensors by identity: what
    lets the pipeline restore a stream by rebinding."""
    vae = build().models.vae
    if direction == "encoder":
        stream, first, later = WanEncoderStream(vae), torch.rand(1, 3, 5, 64, 64), torch.rand(1, 3, 8, 64, 64)
    else:
        stream, first = WanDecoderStream(vae), torch.randn(1, vae.config.z_dim, 2, 8, 8)
        later = first
    stream(first.double())
    cache, entries, position = stream.cache, list(stream.cache), stream.snapshot()[1]
    fail_on_calls(monkeypatch, getattr(vae, direction), {2})
    with pytest.raises(KeyboardInterrupt):
        stream(later.double())
    assert stream.cache is cache and all(a is b for a, b in zip(stream.cache, entries))
    assert stream.snapshot()[1] == position and any(isinstance(e, torch.Tensor) for e in entries)
