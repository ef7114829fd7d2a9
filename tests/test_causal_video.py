"""The block-causal Wan transformer with its rolling K/V cache (issue 16, items 1 and 3(a)(b)(d)).

The oracle is `BlockCausalReference`: diffusers' own Wan attention over the whole sequence in one
call, with a sink + window block mask and positions from frame 0. Chunk by chunk against the cache
must give the same outputs (float64, 1e-9), so the cache holds exactly the right keys, rotated at
the right positions, and nothing else.
"""
from __future__ import annotations

import pytest
import torch

from livediff.errors import ConfigError, InputError
from livediff.pipelines.causal.attention import chunk_rotary, slot_of, visible_chunks
from livediff.pipelines.causal.cache import RollingKVCache
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.presets import TINY_WAN_CAUSAL, build_tiny_wan_causal
from causal_reference import BlockCausalReference, block_causal_mask
from livediff.pipelines.causal.transformer import CausalWanTransformer

TOL = 1e-9
F64 = torch.float64
BATCH, CHANNELS, HEIGHT, WIDTH = 2, TINY_WAN_CAUSAL["in_channels"], 4, 4


@pytest.fixture(scope="module")
def model():
    return build_tiny_wan_causal(seed=0, dtype=F64)


def stream(chunks: int, chunk_frames: int, seed: int = 1):
    """Latents of `chunks` chunks, per-row per-chunk timesteps (all different) and a text."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(BATCH, CHANNELS, chunks * chunk_frames, HEIGHT, WIDTH, generator=g, dtype=F64)
    timesteps = torch.rand(BATCH, chunks, generator=g, dtype=F64) * 999
    text = torch.randn(BATCH, 5, TINY_WAN_CAUSAL["text_dim"], generator=g, dtype=F64)
    return latents, timesteps, text


def chunk(latents: torch.Tensor, k: int, frames: int) -> torch.Tensor:
    return latents[:, :, k * frames:(k + 1) * frames]


def run_cached(causal: CausalWanTransformer, latents, timesteps, text) -> torch.Tensor:
    """Chunk by chunk; each chunk's own call is the one its keys/values are committed from."""
    frames = causal.config.chunk_frames
    cache = causal.new_cache(BATCH, HEIGHT, WIDTH)
    outs = []
    with torch.no_grad():
        for k in range(timesteps.shape[1]):
            outs.append(causal(chunk(latents, k, frames), timesteps[:, k], text, cache))
            cache.commit()
    return torch.cat(outs, dim=2)


def recompute(model, config, latents, timesteps, text) -> torch.Tensor:
    with torch.no_grad():
        return BlockCausalReference(model, config)(latents, timesteps, text)


# --- options and the pure maths ----------------------------------------------------------------

@pytest.mark.parametrize("options, words", [
    (dict(chunk_frames=0), "chunk_frames 0 must be an integer in 1..16"),
    (dict(sink_chunks=-1), "sink_chunks -1 must be an integer in 0..16"),
    (dict(window_chunks=0), "window_chunks 0 must be an integer in 1..64"),
    (dict(window_chunks=2.0), "window_chunks 2.0 must be an integer"),
    (dict(cache_after="first"), "cache_after 'first' must be one of final, last_step"),
    (dict(context_timestep=-1), "context_timestep -1 must be a number in [0, 1000]"),
])
def test_options_are_validated(options, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(").replace(".", r"\.")):
        CausalConfig(**options)


def test_sinks_stay_and_the_window_is_a_ring():
    assert [slot_of(c, 2, 3) for c in range(9)] == [0, 1, 2, 3, 4, 2, 3, 4, 2]
    assert visible_chunks(6, 2, 3) == [0, 1, 3, 4, 5, 6]
    assert visible_chunks(2, 2, 3) == [0, 1, 2]
    mask = block_causal_mask(3, 2, 0, 1)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected.repeat_interleave(2, 0).repeat_interleave(2, 1))


# --- the model is diffusers' own where nothing causal happens ------------------------------------

def test_one_chunk_without_cache_equals_diffusers_forward(model):
    latents, timesteps, text = stream(1, 3)
    causal = CausalWanTransformer(model, CausalConfig(chunk_frames=3))
    with torch.no_grad():
        ours = causal(latents, timesteps[:, 0], text)
        theirs = model(latents, timesteps[:, 0], text, return_dict=False)[0]
    assert (ours - theirs).abs().max() < TOL
    assert all(type(m.processor).__name__ == "WanAttnProcessor"
               for name, m in model.named_modules() if name.endswith(("attn1", "attn2")))  # original untouched


# --- (a) cache = masked recompute while the sequence fits; (b) with sinks + a sliding window ------

@pytest.mark.parametrize("chunk_frames, sinks", [(1, 0), (2, 1)])
def test_cached_chunks_equal_block_causal_recompute(model, chunk_frames, sinks):
    chunks = 5
    config = CausalConfig(chunk_frames=chunk_frames, sink_chunks=sinks, window_chunks=chunks)
    latents, timesteps, text = stream(chunks, chunk_frames)
    cached = run_cached(CausalWanTransformer(model, config), latents, timesteps, text)
    reference = recompute(model, config, latents, timesteps, text)
    assert (cached - reference).abs().max() < TOL
    # block-causal and not full attention: the masked recompute differs from the plain model
    with torch.no_grad():
        full = model(latents, timesteps.repeat_interleave(cached.shape[2] // chunks * 4, 1), text,
                     return_dict=False)[0]
    assert (full - reference)[:, :, :-chunk_frames].abs().max() > 1e-3


@pytest.mark.parametrize("sinks, window", [(1, 2), (0, 2), (2, 1)])
def test_sliding_window_with_sinks_equals_windowed_recompute(model, sinks, window):
    chunks, frames = 7, 1
    config = CausalConfig(chunk_frames=frames, sink_chunks=sinks, window_chunks=window)
    latents, timesteps, text = stream(chunks, frames, seed=2)
    cached = run_cached(CausalWanTransformer(model, config), latents, timesteps, text)
    reference = recompute(model, config, latents, timesteps, text)
    assert (cached - reference).abs().max() < TOL
    # the window matters: forgetting nothing would give other outputs once it slides
    unbounded = recompute(model, CausalConfig(chunk_frames=frames, sink_chunks=sinks, window_chunks=chunks),
                          latents, timesteps, text)
    assert (unbounded - reference)[:, :, -1].abs().max() > 1e-3


# --- (d) rotary positions of cached keys -------------------------------------------------------

def test_chunk_positions_are_the_whole_sequence_positions(model):
    frames, chunks = 2, 4
    whole = torch.zeros(1, CHANNELS, frames * chunks, HEIGHT, WIDTH, dtype=F64)
    cos, sin = model.rope(whole)  # diffusers' positions of the recompute, frame 0 onwards
    tokens = frames * (HEIGHT // 2) * (WIDTH // 2)
    for k in range(chunks):
        c, s = chunk_rotary(model.rope, k * frames, (frames, HEIGHT // 2, WIDTH // 2))
        assert torch.equal(c, cos[:, k * tokens:(k + 1) * tokens]) and torch.equal(s, sin[:, k * tokens:(k + 1) * tokens])
    # beyond the model's table (rope_max_seq_len) positions keep counting with the same formula
    far = TINY_WAN_CAUSAL["rope_max_seq_len"] + 5
    c, _ = chunk_rotary(model.rope, far, (1, 1, 1))
    assert c.shape == (1, 1, 1, TINY_WAN_CAUSAL["attention_head_dim"]) and torch.isfinite(c).all()


def test_restarting_chunk_positions_at_zero_would_break_equality(model, monkeypatch):
    """So the equality tests above really check positions: with every chunk at frame 0, the cached run
    differs from the recompute from the second chunk on (the first is at frame 0 either way)."""
    frames, chunks = 1, 4
    config = CausalConfig(chunk_frames=frames, sink_chunks=0, window_chunks=chunks)
    latents, timesteps, text = stream(chunks, frames, seed=3)
    reference = recompute(model, config, latents, timesteps, text)
    monkeypatch.setattr(RollingKVCache, "next_frame", property(lambda self: 0))
    restarted = run_cached(CausalWanTransformer(model, config), latents, timesteps, text)
    assert (restarted - reference)[:, :, 0].abs().max() < TOL
    assert (restarted - reference)[:, :, 1:].abs().amax(dim=(0, 1, 3, 4)).min() > 1e-4


# --- the cache: constant memory, reads never write, the commit policies -------------------------

def test_cache_memory_is_constant_over_a_long_stream(model):
    config = CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=2, cache_after="last_step")
    causal = CausalWanTransformer(model, config)
    cache = causal.new_cache(BATCH, HEIGHT, WIDTH)
    latents, timesteps, text = stream(1, 1, seed=4)
    seen = {}
    with torch.no_grad():
        for k in range(50):
            causal(latents, timesteps[:, 0], text, cache)
            causal.finish_chunk(cache)
            if k + 1 in (3, 50):
                seen[k + 1] = ([(tuple(t.shape), t.data_ptr()) for t in cache.tensors()], cache.nbytes)
    assert seen[3] == seen[50]
    assert cache.chunks == 50 and cache.next_frame == 50 and bool(cache.filled.all())


def test_reading_the_cache_never_writes_it_until_commit(model):
    config = CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=3)  # cache_after="final"
    causal = CausalWanTransformer(model, config)
    latents, timesteps, text = stream(3, 1, seed=5)
    cache = causal.new_cache(BATCH, HEIGHT, WIDTH)
    with torch.no_grad():
        for k in range(2):
            causal.finish_chunk(cache, clean=chunk(latents, k, 1), text=text)
        before = [t.clone() for t in cache.tensors()]
        steps = [causal(chunk(latents, 2, 1), t, text, cache) for t in (900.0, 500.0, 100.0)]
    assert all(torch.equal(a, b) for a, b in zip(before, cache.tensors())) and cache.chunks == 2
    assert (steps[0] - steps[2]).abs().max() > 1e-3  # the timestep differs per call, the context does not
    causal.finish_chunk(cache, clean=chunk(latents, 2, 1), text=text)
    assert cache.chunks == 3 and not all(torch.equal(a, b) for a, b in zip(before, cache.tensors()))


def test_final_policy_caches_the_clean_pass(model):
    """cache_after="final": earlier chunks are context at the clean timestep, whatever steps denoised them,
    so chunk n at timestep t equals the recompute of [clean chunks at context_timestep; chunk n at t]."""
    frames, chunks = 1, 4
    config = CausalConfig(chunk_frames=frames, sink_chunks=1, window_chunks=2, context_timestep=0.0)
    causal = CausalWanTransformer(model, config)
    latents, timesteps, text = stream(chunks, frames, seed=6)
    cache = causal.new_cache(BATCH, HEIGHT, WIDTH)
    with torch.no_grad():
        for k in range(chunks - 1):
            causal(chunk(latents, k, frames), timesteps[:, k], text, cache)  # a denoising step, discarded
            causal.finish_chunk(cache, clean=chunk(latents, k, frames), text=text)
        last = causal(chunk(latents, chunks - 1, frames), timesteps[:, -1], text, cache)
    context_steps = torch.zeros_like(timesteps)
    context_steps[:, -1] = timesteps[:, -1]
    reference = recompute(model, config, latents, context_steps, text)
    assert (last - reference[:, :, -frames:]).abs().max() < TOL


def test_last_step_policy_commits_the_last_call(model):
    config = CausalConfig(chunk_frames=1, sink_chunks=0, window_chunks=2, cache_after="last_step")
    causal = CausalWanTransformer(model, config)
    latents, timesteps, text = stream(1, 1, seed=7)
    one, two = causal.new_cache(BATCH, HEIGHT, WIDTH), causal.new_cache(BATCH, HEIGHT, WIDTH)
    with torch.no_grad():
        causal(latents, 700.0, text, one)
        causal(latents, 300.0, text, one)
        causal.finish_chunk(one)
        causal(latents, 300.0, text, two)
        two.commit()
    assert all(torch.equal(a, b) for a, b in zip(one.tensors(), two.tensors()))


def test_misuse_is_refused_with_a_sentence(model):
    causal = CausalWanTransformer(model, CausalConfig(chunk_frames=2))
    cache = causal.new_cache(BATCH, HEIGHT, WIDTH)
    latents, timesteps, text = stream(1, 2)
    with pytest.raises(RuntimeError, match="run the transformer on the chunk first"):
        cache.commit()
    with pytest.raises(InputError, match=r"\(batch, channels, 2, height, width\)"):
        causal(latents[:, :, :1], timesteps[:, 0], text, cache)
    with pytest.raises(ConfigError, match="pass clean= and text="):
        causal.finish_chunk(cache)
    with pytest.raises(ConfigError, match="this cache holds chunks of"):
        causal(latents[:, :, :, :2], timesteps[:, 0], text, cache)  # another resolution than the cache's
