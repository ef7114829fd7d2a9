"""Bipartite soft matching (ToMe) as pure functions, shared by token merging and the merged bank.

Tokens are split into a source set and a destination set; each source token finds its most
similar destination (cosine of a metric); the `r` source tokens with the best matches are averaged
into their destinations, the others stay. With masses (how many original tokens a token stands
for) the average is mass-weighted and masses add up, so merging twice is the same as merging the
originals once. Everything is batched over axis 0 and uses gather/scatter-add only, which export
to ONNX as Gather/ScatterElements.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MergePlan:
    """Which tokens merge where; indices are per batch row.

    src, dst: positions of the source / destination tokens in the input, (B, Ns) / (B, Nd).
    kept: indices into src of the tokens that stay, (B, Ns − r).
    merged: indices into src of the tokens that merge, (B, r).
    target: indices into dst each merged token goes to, (B, r).
    Merged output token order: [kept sources ; destinations].
    """

    src: torch.Tensor
    dst: torch.Tensor
    kept: torch.Tensor
    merged: torch.Tensor
    target: torch.Tensor

    @property
    def merged_count(self) -> int:
        return self.merged.shape[1]


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, i], ...] for (B, N) or (B, N, C) tensors."""
    if x.ndim == 2:
        return x.gather(1, index)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def bipartite_plan(metric: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, r: int) -> MergePlan:
    """Plan merging the `r` source tokens most similar to a destination (cosine of `metric`, (B, N, C))."""
    if not 0 <= r <= src.shape[1]:
        raise ValueError(f"cannot merge {r} of {src.shape[1]} source tokens")
    normed = F.normalize(metric, dim=-1)
    scores = take(normed, src) @ take(normed, dst).transpose(1, 2)
    best, best_dst = scores.max(dim=-1)
    order = best.argsort(dim=-1, descending=True)  # exports as TopK; a stable sort has no ONNX lowering
    merged, kept = order[:, :r], order[:, r:]
    return MergePlan(src=src, dst=dst, kept=kept, merged=merged, target=best_dst.gather(1, merged))


def merge_tokens(x: torch.Tensor, plan: MergePlan, mass: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, C) → (B, N − r, C) and the merged tokens' masses (all ones in when `mass` is None)."""
    if mass is None:
        mass = x.new_ones(x.shape[:2])
    mass = mass.to(x.dtype)
    src, dst = take(x, plan.src), take(x, plan.dst)
    src_mass, dst_mass = take(mass, plan.src), take(mass, plan.dst)
    moving_mass = take(src_mass, plan.merged)
    moving = take(src, plan.merged) * moving_mass.unsqueeze(-1)
    # sums per destination as a one-hot product, not scatter_add: ONNX lowers that to
    # ScatterElements(reduction=add), which TensorRT only runs through a plugin
    # (B, Nd, r) one-hot by comparison: F.one_hot validates its indices with a host read
    routes = (plan.target.unsqueeze(1) == torch.arange(dst.shape[1], device=x.device).view(1, -1, 1)).to(x.dtype)
    total = dst * dst_mass.unsqueeze(-1) + routes @ moving
    total_mass = dst_mass + (routes @ moving_mass.unsqueeze(-1)).squeeze(-1)
    merged = total / total_mass.clamp_min(1e-12).unsqueeze(-1)  # mass 0 (an emptied slot) stays 0, never 0/0
    out = torch.cat([take(src, plan.kept), merged], dim=1)
    return out, torch.cat([take(src_mass, plan.kept), total_mass], dim=1)


def unmerge_tokens(y: torch.Tensor, plan: MergePlan, n: int) -> torch.Tensor:
    """(B, N − r, C) → (B, N, C): every merged source token gets its destination's value back."""
    batch, _, channels = y.shape
    kept_count = plan.kept.shape[1]
    kept, dst = y[:, :kept_count], y[:, kept_count:]

    def rows(index: torch.Tensor) -> torch.Tensor:
        return index.unsqueeze(-1).expand(-1, -1, channels)

    out = y.new_empty(batch, n, channels)
    out.scatter_(1, rows(take(plan.src, plan.kept)), kept)
    out.scatter_(1, rows(plan.dst), dst)
    out.scatter_(1, rows(take(plan.src, plan.merged)), take(dst, plan.target))
    return out


def random_partition(batch: int, n: int, generator: torch.Generator | None, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of n tokens into a source half (⌊n/2⌋) and a destination half, per row."""
    order = torch.rand(batch, n, generator=generator, device=device).argsort(dim=1)
    return order[:, : n // 2], order[:, n // 2:]


def merge_memory(values: tuple[torch.Tensor, ...], mass: torch.Tensor, metric: torch.Tensor, drop: int,
                 generator: torch.Generator | None) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Shrink a memory of n tokens to n − drop by bipartite soft matching on a random partition.

    values: tensors (B, n, C) merged with the same plan (e.g. keys and values); mass: (B, n);
    metric: (B, n, C) similarity features (the keys). Needs drop <= n // 2. Returns the merged
    values in their dtype and the float32 masses.
    """
    src, dst = random_partition(mass.shape[0], mass.shape[1], generator, mass.device)
    plan = bipartite_plan(metric, src, dst, drop)
    mass = mass.float()  # masses reach max_frames × tokens, beyond float16's range
    merged = [merge_tokens(v.float(), plan, mass) for v in values]
    return tuple(m.to(v.dtype) for (m, _), v in zip(merged, values)), merged[0][1]
