"""A test oracle, the recompute reference: a whole sequence of chunks in one call of diffusers' own Wan attention
with a block-causal (sink + window) mask, positions from frame 0 — what the cached chunk-by-chunk
run must equal. Each chunk's tokens carry that chunk's timestep (diffusers' per-token timestep path),
so a sequence whose chunks were denoised to different levels is one call too.

It costs O(N²) in the stream length: a test oracle and a benchmark baseline, not a streaming path.
"""
from __future__ import annotations

from typing import Any

import torch

from livediff.cross_attention import weight_sharing_copy
from livediff.errors import InputError
from livediff.pipelines.causal.attention import self_attention_layers, token_grid, visible_chunks
from livediff.pipelines.causal.config import CausalConfig


def block_causal_mask(chunks: int, chunk_tokens: int, sink_chunks: int, window_chunks: int,
                      device=None) -> torch.Tensor:
    """(N, N) boolean mask over a whole sequence of `chunks` chunks, True where a query may attend."""
    seen = torch.zeros(chunks, chunks, dtype=torch.bool, device=device)
    for chunk in range(chunks):
        seen[chunk, visible_chunks(chunk, sink_chunks, window_chunks)] = True
    return seen.repeat_interleave(chunk_tokens, 0).repeat_interleave(chunk_tokens, 1)


class MaskedSelfAttnProcessor:
    """diffusers' own Wan self-attention with the reference's current (N, N) mask."""

    def __init__(self, reference: "BlockCausalReference"):
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor

        self.inner = WanAttnProcessor()
        self.reference = reference

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        return self.inner(attn, hidden_states, encoder_hidden_states, self.reference.mask, rotary_emb)


class BlockCausalReference:
    """`model` recomputed over whole sequences with `config`'s chunking, sinks and window as a mask."""

    def __init__(self, model, config: CausalConfig):
        self.config = config
        self.mask: torch.Tensor | None = None
        self.model: Any = weight_sharing_copy(model)  # its self-attention layers apply `mask`, positions from 0
        modules = dict(self.model.named_modules())
        for name in self_attention_layers(self.model):
            modules[name].set_processor(MaskedSelfAttnProcessor(self))

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """latents (B, C, n·chunk_frames, H, W), timesteps (B, n) one per chunk, text (B, L, D)."""
        frames, rows, cols = token_grid(self.model, latents.shape)
        per_chunk = self.config.chunk_frames // self.model.config.patch_size[0]
        chunks = latents.shape[2] // self.config.chunk_frames
        if latents.shape[2] % self.config.chunk_frames or timesteps.shape != (latents.shape[0], chunks):
            raise InputError(f"{latents.shape[2]} latent frames with timesteps {tuple(timesteps.shape)} are not "
                             f"whole chunks of {self.config.chunk_frames} frames with one timestep per row and chunk")
        chunk_tokens = per_chunk * rows * cols
        self.mask = block_causal_mask(chunks, chunk_tokens, self.config.sink_chunks, self.config.window_chunks,
                                           device=latents.device)
        try:
            per_token = timesteps.repeat_interleave(chunk_tokens, dim=1)
            return self.model(latents, per_token, text, return_dict=False)[0]
        finally:
            self.mask = None
