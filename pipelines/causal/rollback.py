"""One chunk of the causal video pipeline, all or nothing: what the chunk advances is put back when
its computation raises (an error, or Ctrl-C's KeyboardInterrupt while the chunk computes).

A chunk advances four things: the VAE encoder and decoder streams (their conv caches and frame
counts), the stream's noise generator (none on `meta`), and the K/V cache. The VAE streams publish a new cache list
per call and never edit an old one (`vae` module docstring), so their snapshots are references and
restoring them is rebinding. The generator's state is a few kilobytes, saved and set back. The K/V
cache needs nothing saved: the pipeline commits the chunk into it as the chunk's very last step,
so before that only staged keys/values exist, and they are discarded. What this cannot undo is an
interruption inside `RollingKVCache.commit` itself (it writes the ring slot in place).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from livediff.pipelines.causal.cache import RollingKVCache
from livediff.pipelines.causal.vae import WanDecoderStream, WanEncoderStream


@contextmanager
def rollback_on_error(encoder: WanEncoderStream, decoder: WanDecoderStream, cache: RollingKVCache,
                      noise: torch.Generator | None) -> Iterator[None]:
    """Run the block; if it raises anything, put the streams, the generator and the cache's staging back
    as they were when it started, and let the exception propagate."""
    encoded, decoded = encoder.snapshot(), decoder.snapshot()
    drawn = noise.get_state() if noise is not None else None
    try:
        yield
    except BaseException:
        encoder.restore(encoded)
        decoder.restore(decoded)
        if noise is not None and drawn is not None:
            noise.set_state(drawn)
        cache.discard()
        raise
