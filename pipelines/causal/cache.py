"""`RollingKVCache`: the keys/values of earlier chunks, in fixed-size tensors for an endless stream.

Per self-attention layer one key and one value tensor of (batch, slots · chunk_tokens, heads, head_dim)
is allocated once; slots are the `sink_chunks` sinks (the first chunks of the stream, kept forever)
followed by a ring of `window_chunks` slots that the later chunks overwrite in turn. A boolean mask
over the slots' tokens says which are filled, so the attention shapes never change (static shapes
for compiled backends later) and an empty slot is simply not attended to. Slot order does not matter
to attention: keys are stored already rotated at their absolute positions.

Reading never writes. A transformer call stages its chunk's keys/values here (`stage`); only
`commit` copies the staged ones into the chunk's slot and advances the stream by one chunk. So a
chunk can be denoised over several calls at different timesteps against the same context, and its
owner decides which call's keys/values become context (`CausalConfig.cache_after`).
"""
from __future__ import annotations

from typing import Sequence

import torch

from livediff.errors import ConfigError
from livediff.pipelines.causal.attention import slot_of
from livediff.pipelines.causal.config import CausalConfig


class RollingKVCache:
    """Sink + window K/V cache of one stream (see the module docstring)."""

    def __init__(self, config: CausalConfig, layers: Sequence[str], batch: int, chunk_tokens: int, heads: int,
                 head_dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        for name, value in (("batch", batch), ("chunk_tokens", chunk_tokens), ("heads", heads),
                            ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"cache {name} {value!r} must be a positive integer")
        if not layers:
            raise ConfigError("a K/V cache needs at least one self-attention layer")
        self.config = config
        self.layers = tuple(layers)
        self.chunk_shape = (batch, chunk_tokens, heads, head_dim)
        size = (batch, config.cache_chunks * chunk_tokens, heads, head_dim)
        self.keys = {name: torch.zeros(size, dtype=dtype, device=device) for name in self.layers}
        self.values = {name: torch.zeros(size, dtype=dtype, device=device) for name in self.layers}
        self.filled = torch.zeros(size[1], dtype=torch.bool, device=device)
        self.chunks = 0  # chunks committed so far (the stream's next chunk index)
        self._staged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def next_frame(self) -> int:
        """Absolute latent frame index of the next chunk (its rotary position)."""
        return self.chunks * self.config.chunk_frames

    @property
    def nbytes(self) -> int:
        tensors = [*self.keys.values(), *self.values.values(), self.filled]
        return sum(t.numel() * t.element_size() for t in tensors)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (layer order: keys, values; then the fill mask)."""
        return [t for name in self.layers for t in (self.keys[name], self.values[name])] + [self.filled]

    def read(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keys, values, filled) of `layer`: (B, S, heads, D), (B, S, heads, D), (S,) boolean."""
        return self.keys[layer], self.values[layer], self.filled

    def stage(self, layer: str, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Remember this call's chunk keys/values of `layer` (rotated) for a later `commit`."""
        if layer not in self.keys:
            raise ConfigError(f"layer {layer!r} is not one of this cache's layers {list(self.layers)}")
        if tuple(keys.shape) != self.chunk_shape or tuple(values.shape) != self.chunk_shape:
            raise ConfigError(f"layer {layer}: a chunk's keys/values are {tuple(keys.shape)}, this cache holds "
                              f"chunks of {self.chunk_shape} (batch, tokens, heads, head_dim)")
        self._staged[layer] = (keys, values)

    @property
    def staged(self) -> bool:
        return set(self._staged) == set(self.layers)

    def discard(self) -> None:
        """Forget the staged keys/values (the cache itself is unchanged)."""
        self._staged.clear()

    def commit(self) -> None:
        """Write the staged keys/values as the stream's next chunk and advance by one chunk."""
        if not self.staged:
            missing = sorted(set(self.layers) - set(self._staged))
            raise RuntimeError(f"nothing to commit for layers {missing}: run the transformer on the chunk first")
        tokens = self.chunk_shape[1]
        start = slot_of(self.chunks, self.config.sink_chunks, self.config.window_chunks) * tokens
        with torch.no_grad():
            for name, (keys, values) in self._staged.items():
                self.keys[name][:, start:start + tokens].copy_(keys)
                self.values[name][:, start:start + tokens].copy_(values)
            self.filled[start:start + tokens] = True
        self._staged.clear()
        self.chunks += 1

    def reset(self) -> None:
        """An empty cache at frame 0 (same tensors, nothing attended to)."""
        self.filled.zero_()
        self._staged.clear()
        self.chunks = 0
