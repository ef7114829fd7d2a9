"""Token merging for Stable Diffusion (the ToMe for SD idea) inside self-attention.

Self-attention cost is quadratic in the number of tokens, and neighbouring tokens of a latent are
often nearly equal. Before self-attention the `r = ratio·N` most redundant tokens are averaged into
similar ones; attention runs on N − r tokens; afterwards every merged token gets its
destination's output back, so the rest of the network sees the full grid.

Choices: destinations are one token per 2×2 cell at a fixed position (no random choice, so the same
frame always merges the same way — random choices would add flicker to video — and the graph has
no random op); only the highest-resolution level that has self-attention merges (level 0 for
SD1.5/2.x, level 1 for SDXL), where most of the cost is; ratio 0 skips merging entirely, so it is
exactly the unmerged computation.

The maths is pure functions; the video pipeline's attention processors (`pipelines.bank.attention`,
installed on a weight-sharing copy of the UNet, so the original is never patched) call them:
`attention_plan`, then `merge_tokens` / `unmerge_tokens` from `pipelines.bank.merge`.
"""
from __future__ import annotations

import torch

from livediff.pipelines.bank.merge import MergePlan, bipartite_plan
from livediff.errors import ConfigError

MAX_RATIO = 0.75  # every token but the 2×2 destinations: a ratio above 3/4 has nothing left to merge


def check_ratio(ratio) -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= ratio <= MAX_RATIO:
        raise ConfigError(f"token_merge_ratio {ratio!r} is outside [0, {MAX_RATIO}]")
    return float(ratio)


def destination_count(h: int, w: int) -> int:
    """Destinations: one per 2×2 cell, at its (even, even) corner."""
    return ((h + 1) // 2) * ((w + 1) // 2)


def grid_partition(h: int, w: int, device) -> tuple[torch.Tensor, int]:
    """The positions of an h×w grid, sources first then destinations (each side in position order),
    and the number of sources; made on `device` from index arithmetic: no boolean mask (its size
    would depend on data for a tracer) and no host copy."""
    positions = torch.arange(h * w, device=device)
    is_dst = ((positions // w) % 2 == 0) & ((positions % w) % 2 == 0)
    order = torch.argsort(is_dst.long() * (h * w) + positions)
    return order, h * w - destination_count(h, w)


def merged_count(h: int, w: int, ratio: float) -> int:
    """r for a grid: ratio·N, at most the number of source (non-destination) tokens."""
    return min(int(h * w * ratio), h * w - destination_count(h, w))


def merge_level(layers) -> int:
    """The level whose self-attention layers merge: the highest-resolution one that has any."""
    levels = [layer.level for layer in layers if not layer.cross]
    if not levels:
        raise ConfigError("this UNet has no self-attention layer to merge tokens in")
    return min(levels)


def tokens_after_merge(grid: tuple[int, int], ratio: float) -> int:
    """Tokens a merging self-attention layer attends over (what the bank stores per frame for it)."""
    h, w = grid
    return h * w - merged_count(h, w, ratio)


def attention_plan(x: torch.Tensor, grid: tuple[int, int], ratio: float) -> MergePlan | None:
    """The merge plan of hidden states x (B, h·w, C) for self-attention; None when nothing merges."""
    h, w = grid
    if x.shape[1] != h * w:
        raise ValueError(f"{x.shape[1]} tokens do not form the expected {h}x{w} grid")
    r = merged_count(h, w, ratio)
    if r == 0:
        return None
    order, sources = grid_partition(h, w, x.device)
    return bipartite_plan(x, order.expand(x.shape[0], -1), sources, r)
