"""Causal video diffusion: a Wan-layout transformer run chunk by chunk with a rolling K/V cache
(sinks + a window of recent chunks), the StreamDiffusionV2 / Self-Forcing way of streaming video.

    from livediff.pipelines.causal import CausalConfig, CausalWanTransformer
    causal = CausalWanTransformer(wan_transformer, CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=4))
    cache = causal.new_cache(batch=1, height=h, width=w)
    for chunk in chunks:                          # (B, C, chunk_frames, h, w) latents
        for t in timesteps:
            prediction = causal(noisy, t, text, cache)    # reads the cache, never writes it
            ...
        causal.finish_chunk(cache, clean=denoised, text=text)

Modules: `config` (validated options), `attention` (which chunks a chunk sees, rotary positions,
the processors), `cache` (`RollingKVCache`), `transformer` (the runner; the masked whole-sequence
recompute it must equal is a test oracle, tests/causal_reference.py), `vae` (the Wan video VAE
encoded/decoded as a stream with its own causal conv caches), `presets` (random-weight tiny models),
`models` (a preset or a Wan-layout model loaded and placed), `pipeline` (`CausalVideoPipeline`),
`sampler` (how a chunk goes from one stage's sigma to the next: "renoise" or "euler"), `rollback` (a
chunk all or nothing in the pipeline).
"""
from __future__ import annotations

__all__ = ["CausalConfig", "CausalWanTransformer", "RollingKVCache"]


def __getattr__(name: str):
    if name == "CausalConfig":
        from livediff.pipelines.causal.config import CausalConfig

        return CausalConfig
    if name == "CausalWanTransformer":
        from livediff.pipelines.causal.transformer import CausalWanTransformer

        return CausalWanTransformer
    if name == "RollingKVCache":
        from livediff.pipelines.causal.cache import RollingKVCache

        return RollingKVCache
    if name == "CausalVideoPipeline":
        from livediff.pipelines.causal.pipeline import CausalVideoPipeline

        return CausalVideoPipeline
    raise AttributeError(f"module 'livediff.pipelines.causal' has no attribute {name!r}")
