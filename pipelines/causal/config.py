"""Validated settings of the block-causal video transformer and its rolling K/V cache.

A stream is cut into chunks of `chunk_frames` latent frames. Chunk k attends to its own tokens
(bidirectionally) and to the cached keys/values of earlier chunks; the cache keeps the first
`sink_chunks` chunks forever (attention sinks: the stream's anchor) and a window of the
`window_chunks` most recent other chunks, so memory and cost per chunk do not grow with the stream.
"""
from __future__ import annotations

from dataclasses import dataclass

from livediff.errors import ConfigError

MAX_CHUNK_FRAMES = 16
MAX_SINK_CHUNKS = 16
MAX_WINDOW_CHUNKS = 64
MAX_TIMESTEP = 1000.0
CACHE_AFTER = ("final", "last_step")


def _check_int(name: str, value, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"causal {name} {value!r} must be an integer in {low}..{high}")
    return value


@dataclass(frozen=True)
class CausalConfig:
    """How the transformer is cut into chunks and what its cache holds.

    chunk_frames: latent frames per chunk (a chunk of k latent frames is k·4 video frames with Wan's
        VAE, and costs that much latency).
    sink_chunks: the first chunks of the stream, kept in the cache forever (0 = none).
    window_chunks: how many of the most recent non-sink chunks the cache keeps.
    cache_after: which keys/values of a chunk are written to the cache when the chunk is done.
        "final" (default, the StreamDiffusionV2 / Self-Forcing policy): one more pass over the chunk's
        clean output at `context_timestep`, so later chunks see clean context and not the noise of
        whichever step happened to be last; it costs one extra transformer call per chunk.
        "last_step": the keys/values of the chunk's last denoising call (no extra call, noisier context).
    context_timestep: the timestep of the clean pass (0 = fully clean, as the references use).
    """

    chunk_frames: int = 1
    sink_chunks: int = 1
    window_chunks: int = 4
    cache_after: str = "final"
    context_timestep: float = 0.0

    def __post_init__(self):
        _check_int("chunk_frames", self.chunk_frames, 1, MAX_CHUNK_FRAMES)
        _check_int("sink_chunks", self.sink_chunks, 0, MAX_SINK_CHUNKS)
        _check_int("window_chunks", self.window_chunks, 1, MAX_WINDOW_CHUNKS)
        if self.cache_after not in CACHE_AFTER:
            raise ConfigError(f"causal cache_after {self.cache_after!r} must be one of {', '.join(CACHE_AFTER)}")
        value = self.context_timestep
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not 0.0 <= value <= MAX_TIMESTEP):
            raise ConfigError(f"causal context_timestep {value!r} must be a number in [0, {MAX_TIMESTEP:g}]")

    @property
    def cache_chunks(self) -> int:
        """Chunk slots in the cache: the sinks, then the window's ring."""
        return self.sink_chunks + self.window_chunks
