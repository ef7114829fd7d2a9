"""A test oracle, the recompute reference: a whole sequence of chunks in one call of diffusers' own Wan attention
with a block-causal (sink + window) mask, positions from frame 0 — what the cached chunk-by-chunk
run must equal. Each chunk's tokens carry that chunk's timestep (diffusers' per-token timestep path),
so a sequence whose chunks were denoised to different levels is one call too.

It costs O(N²) in the stream length: a test oracle and a benchmark baseline, not a streaming path.
"""
from __future__ import annotations

import torch

from livediff.errors import InputError
from livediff.pipelines.causal.attention import block_causal_mask, masked_copy, token_grid
from livediff.pipelines.causal.config import CausalConfig


class BlockCausalReference:
    """`model` recomputed over whole sequences with `config`'s chunking, sinks and window as a mask."""

    def __init__(self, model, config: CausalConfig):
        self.config = config
        self.model, self.slot = masked_copy(model)

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """latents (B, C, n·chunk_frames, H, W), timesteps (B, n) one per chunk, text (B, L, D)."""
        frames, rows, cols = token_grid(self.model, latents.shape)
        per_chunk = self.config.chunk_frames // self.model.config.patch_size[0]
        chunks = latents.shape[2] // self.config.chunk_frames
        if latents.shape[2] % self.config.chunk_frames or timesteps.shape != (latents.shape[0], chunks):
            raise InputError(f"{latents.shape[2]} latent frames with timesteps {tuple(timesteps.shape)} are not "
                             f"whole chunks of {self.config.chunk_frames} frames with one timestep per row and chunk")
        chunk_tokens = per_chunk * rows * cols
        self.slot.mask = block_causal_mask(chunks, chunk_tokens, self.config.sink_chunks, self.config.window_chunks,
                                           device=latents.device)
        try:
            per_token = timesteps.repeat_interleave(chunk_tokens, dim=1)
            return self.model(latents, per_token, text, return_dict=False)[0]
        finally:
            self.slot.mask = None
