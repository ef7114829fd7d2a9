"""Bipartite soft matching (ToMe) as pure functions, shared by token merging and the merged bank.

Tokens are split into a source set and a destination set; each source token finds its most
similar destination (cosine of a metric); the `r` source tokens with the best matches are averaged
into their destinations, the others stay. With masses (how many original tokens a token stands
for) the average is mass-weighted and masses add up, so merging twice is the same as merging the
originals once. Everything is batched over axis 0 and made of gathers, batched matrix products
and scatters without reduction, which TensorRT parses natively.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MergePlan:
    """Which tokens merge where; indices are per batch row.

    order: (B, N) token positions, the `sources` source tokens first, then the destinations.
    ranking: (B, Ns) indices into the sources, best match first: the first r merge, the rest stay.
    target: (B, r) indices into the destinations each merged source goes to.
    Merged output token order: [kept sources ; destinations].
    Positions are kept as one permutation (not separate source and destination lists) so applying
    a plan is one gather of the input and one of its sources.
    """

    order: torch.Tensor
    sources: int
    ranking: torch.Tensor
    target: torch.Tensor

    @property
    def merged_count(self) -> int:
        return self.target.shape[1]

    @property
    def src(self) -> torch.Tensor:
        return self.order[:, :self.sources]

    @property
    def dst(self) -> torch.Tensor:
        return self.order[:, self.sources:]

    @property
    def merged(self) -> torch.Tensor:
        return self.ranking[:, :self.merged_count]

    @property
    def kept(self) -> torch.Tensor:
        return self.ranking[:, self.merged_count:]


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, i], ...] for (B, N) or (B, N, C) tensors."""
    if x.ndim == 2:
        return x.gather(1, index)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def bipartite_plan(metric: torch.Tensor, order: torch.Tensor, sources: int, r: int) -> MergePlan:
    """Plan merging the `r` source tokens most similar to a destination (cosine of `metric`, (B, N, C));
    `order` (B, N) lists the source positions first (`sources` of them), then the destinations."""
    if not 0 <= r <= sources:
        raise ValueError(f"cannot merge {r} of {sources} source tokens")
    normed = take(F.normalize(metric, dim=-1), order)
    scores = torch.bmm(normed[:, :sources], normed[:, sources:].transpose(1, 2))
    best, best_dst = scores.max(dim=-1)
    ranking = best.argsort(dim=-1, descending=True)  # exports as TopK; a stable sort has no ONNX lowering
    return MergePlan(order=order, sources=sources, ranking=ranking, target=best_dst.gather(1, ranking[:, :r]))


def merge_tokens(x: torch.Tensor, plan: MergePlan, mass: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, C) → (B, N − r, C) and the merged tokens' masses (all ones in when `mass` is None)."""
    if mass is None:
        mass = x.new_ones(x.shape[:2])
    mass = mass.to(x.dtype).unsqueeze(-1)
    # mass-weighted values and their masses travel as one tensor: one gather and one sum for both
    weighted = torch.cat([x * mass, mass], dim=-1)
    permuted = take(weighted, plan.order)
    src, dst = permuted[:, :plan.sources], permuted[:, plan.sources:]
    ranked = take(src, plan.ranking)
    r = plan.merged_count
    # sums per destination as a one-hot product, not scatter_add: ONNX lowers that to
    # ScatterElements(reduction=add), which TensorRT only runs through a plugin
    # (B, Nd, r) one-hot by comparison: F.one_hot validates its indices with a host read
    routes = (plan.target.unsqueeze(1) == torch.arange(dst.shape[1], device=x.device).view(1, -1, 1)).to(x.dtype)
    totals = torch.cat([ranked[:, r:], torch.baddbmm(dst, routes, ranked[:, :r])], dim=1)
    total_mass = totals[..., -1]
    # mass 0 (an emptied slot) gives 0, never 0/0
    return totals[..., :-1] / total_mass.clamp_min(1e-12).unsqueeze(-1), total_mass


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


def random_partition(batch: int, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """A seeded random order of n tokens per row: the first ⌊n/2⌋ are the sources."""
    return torch.rand(batch, n, generator=generator, device=device).argsort(dim=1)


def merge_memory(values: list[torch.Tensor], mass: torch.Tensor, drop: int, generator: torch.Generator | None
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Shrink a memory of n tokens to n − drop by bipartite soft matching on a random partition.

    values: tensors (B, n, C_k) merged with the same plan (e.g. keys and values), the first one
    being the similarity metric; mass: (B, n). Needs drop <= n // 2. Returns the merged values in
    their dtype and the float32 masses. The values are merged as one channel-concatenated tensor:
    one plan, one weighted sum, instead of one per value.
    """
    order = random_partition(mass.shape[0], mass.shape[1], generator, mass.device)
    plan = bipartite_plan(values[0], order, mass.shape[1] // 2, drop)
    joined = torch.cat(values, dim=-1) if len(values) > 1 else values[0]
    merged, merged_mass = merge_tokens(joined.float(), plan, mass.float())  # masses exceed float16's range
    parts = merged.split([v.shape[-1] for v in values], dim=-1)
    return [part.to(v.dtype) for part, v in zip(parts, values)], merged_mass
