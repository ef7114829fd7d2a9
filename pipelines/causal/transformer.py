"""`CausalWanTransformer`: a diffusers `WanTransformer3DModel` run chunk by chunk against a rolling cache.

One call denoises one chunk (B, C, chunk_frames, H, W) at one timestep per row: its self-attention
sees its own tokens and the cache's earlier chunks, its rotary positions start at the chunk's
absolute frame (`cache.next_frame`). Calls only stage the chunk's keys/values; the chunk enters the
cache when its owner finishes it with `finish_chunk`, by the configured policy:

* cache_after="final": one more call on the chunk's clean output at `context_timestep` (0), whose
  keys/values are committed (StreamDiffusionV2 / Self-Forcing);
* cache_after="last_step": the keys/values staged by the chunk's last denoising call are committed.

The text is projected once per prompt: every call binds its text tensor to `prompt` (`PromptKV`: the
model's text projection and every cross-attention layer's keys/values, recomputed only for another
tensor or an in-place edit of the bound one) and cross-attention reads those keys/values.
"""
from __future__ import annotations

import torch

from livediff.errors import ConfigError, InputError
from livediff.pipelines.causal.attention import (CausalSlot, PromptKV, causal_copy, check_chunk_frames,
                                                 cross_attention_layers, token_grid)
from livediff.pipelines.causal.cache import RollingKVCache
from livediff.pipelines.causal.config import CausalConfig


def timestep_rows(timestep, batch: int, device) -> torch.Tensor:
    """A timestep (number, or tensor of 1 or `batch` values) as a (batch,) tensor; a number is filled in
    on the device (no tensor made on the host and copied over per call)."""
    if isinstance(timestep, (int, float)):
        return torch.full((batch,), float(timestep), device=device)
    t = timestep.to(device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise InputError(f"timestep of shape {tuple(t.shape)} must be a number or have one value per row ({batch})")
    return t


class CausalWanTransformer:
    """A block-causal view of `model` (the model itself is shared, never modified)."""

    def __init__(self, model, config: CausalConfig):
        check_chunk_frames(model, config)
        copy, slot, layers = causal_copy(model)
        self.use_copy(config, copy, slot, layers, PromptKV(copy, cross_attention_layers(copy)))

    def use_copy(self, config: CausalConfig, copy, slot: CausalSlot, layers: list[str], prompt: PromptKV) -> None:
        """Run on the causal copy `copy` (its `slot`, self-attention `layers` and `prompt`). A subclass that
        already holds one (the graph runner's function) passes its own, so no second copy is built."""
        self.config = config
        self.model, self.slot, self.layers = copy, slot, layers
        #: the text cross-attention layers and their keys/values of the bound prompt
        self.text_layers = prompt.layers
        self.prompt = prompt
        self.heads = copy.config.num_attention_heads
        self.head_dim = copy.config.attention_head_dim

    def chunk_tokens(self, height: int, width: int) -> int:
        frames, rows, cols = token_grid(self.model, (1, 1, self.config.chunk_frames, height, width))
        return frames * rows * cols

    def new_cache(self, batch: int, height: int, width: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> RollingKVCache:
        """An empty cache for a stream of `batch` rows of (height, width) latents, by default in the model's
        compute dtype (diffusers' `dtype` skips the modules kept in float32) on its device."""
        return RollingKVCache(self.config, self.layers, batch, self.chunk_tokens(height, width), self.heads,
                              self.head_dim, dtype or self.model.dtype, device or self.model.device)

    def bind_text(self, text: torch.Tensor) -> PromptKV:
        """Compute `text`'s projection and cross-attention keys/values now (once per prompt; a call with
        the same unchanged tensor reuses them)."""
        self.prompt.bind(text)
        return self.prompt

    def __call__(self, latents: torch.Tensor, timestep, text: torch.Tensor,
                 cache: RollingKVCache | None = None) -> torch.Tensor:
        """The model's output for one chunk. With a cache: attends to it and stages this chunk's K/V in it.
        Without: the chunk attends to itself only, at positions from frame 0."""
        if latents.ndim != 5 or latents.shape[2] != self.config.chunk_frames:
            raise InputError(f"a chunk is (batch, channels, {self.config.chunk_frames}, height, width) latents, got "
                             f"{tuple(latents.shape)}")
        t = timestep_rows(timestep, latents.shape[0], latents.device)
        self.slot.frame_offset = cache.next_frame if cache is not None else 0
        self.slot.text = self.prompt.bind(text)
        self.slot.cache = cache
        try:
            return self.model(latents, t, text, return_dict=False)[0]
        finally:
            self.slot.cache = None
            self.slot.text = None

    def finish_chunk(self, cache: RollingKVCache, clean: torch.Tensor | None = None,
                     text: torch.Tensor | None = None) -> None:
        """Make the current chunk context for the next ones (see the module docstring); `clean` (the chunk's
        final latents) and `text` are needed for cache_after="final"."""
        if self.config.cache_after == "final":
            if clean is None or text is None:
                raise ConfigError("cache_after='final' writes the cache from a pass over the chunk's clean latents: "
                                  "pass clean= and text=")
            self.commit_clean(cache, clean, text)
        else:
            cache.commit()

    def commit_clean(self, cache: RollingKVCache, clean: torch.Tensor, text: torch.Tensor) -> None:
        """Run the chunk's clean latents at `context_timestep` and commit their keys/values."""
        cache.discard()
        with torch.no_grad():
            self(clean, self.config.context_timestep, text, cache)
        cache.commit()
