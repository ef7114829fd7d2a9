"""Motion-guided sparse bank (the Ada-VE idea): bank fewer tokens of static regions.

Extended attention costs grow with the number of banked tokens, but tokens of static regions
are nearly the same from frame to frame, so a sample of them carries almost all their
information. Each banked frame keeps a fixed budget of tokens (fixed so the bank's tensor shapes
never change): every token of a moving region first, then a fixed uniform sample of the static
ones. Kept static tokens carry the mass of the static tokens they stand for, so with
proportional attention (bias = log mass) the frame still weighs as much as a dense one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def latent_motion(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Per-position motion of latents (F, C, h, w) → (F, h, w): mean |Δ| over channels relative
    to the current latent's standard deviation, so the threshold does not depend on the VAE's scale."""
    scale = current.float().std(dim=(1, 2, 3), keepdim=True).squeeze(1) + 1e-6
    return (current.float() - previous.float()).abs().mean(dim=1) / scale


def budget(tokens: int, keep_ratio: float) -> int:
    """Tokens a banked frame keeps out of `tokens`."""
    return max(1, math.ceil(tokens * keep_ratio))


@dataclass(frozen=True)
class Selection:
    """index: (K, budget) kept token positions; mass: (K, budget) their masses; dropped_moving: (K,)
    moving tokens that did not fit in the budget (0 unless moving regions exceed it)."""

    index: torch.Tensor
    mass: torch.Tensor
    dropped_moving: torch.Tensor


def select_tokens(motion: torch.Tensor, grid: tuple[int, int], keep: int, threshold: float,
                  static_rank: torch.Tensor) -> Selection:
    """Choose `keep` tokens of a layer's (h, w) grid for each of K frames.

    motion: (K, H, W) latent motion (`latent_motion`), max-pooled to the grid so a token counts
    as moving when any latent position under it moves. static_rank: (h·w,) fixed values in [0, 1)
    ranking static tokens (a fixed random permutation gives a uniform spatial sample that stays
    the same from frame to frame). When moving tokens exceed the budget, the most moving ones are
    kept and the rest counted in `dropped_moving`.
    """
    pooled = F.adaptive_max_pool2d(motion.unsqueeze(1).float(), grid).flatten(1)
    moving = pooled > threshold
    score = torch.where(moving, 2.0 + pooled, static_rank.to(pooled.device).expand_as(pooled))
    index = score.topk(keep, dim=1).indices
    kept_moving = moving.gather(1, index)
    static_total = (~moving).sum(dim=1, keepdim=True).float()
    static_kept = (~kept_moving).sum(dim=1, keepdim=True).float().clamp(min=1.0)
    mass = torch.where(kept_moving, torch.ones_like(index, dtype=torch.float32), static_total / static_kept)
    return Selection(index=index, mass=mass, dropped_moving=moving.sum(1) - kept_moving.sum(1))
