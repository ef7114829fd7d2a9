"""Bipartite soft matching (ToMe) as pure functions, shared by token merging and the merged bank.

Tokens are split into a source set and a destination set; each source token finds its most
similar destination (cosine of a metric); the `r` source tokens with the best matches are averaged
into their destinations, the others stay. Everything is batched over axis 0.

Two places merge, each with the form its runner needs:
* token merging inside self-attention (`merge_tokens`, exported with the banked UNet): gathers,
  batched matrix products and scatters without reduction, which TensorRT parses natively;
* the merged bank memory (`merge_memory`, run eagerly between UNet calls, never exported): sums
  with `index_add_` and matching in bounded blocks, so a write costs the matching's products and
  no (rows, destinations, sources) one-hot. Its tokens carry masses (how many original tokens a
  token stands for): the average is mass-weighted and masses add up, so merging twice is the same
  as merging the originals once.
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


def bipartite_plan(metric: torch.Tensor, order: torch.Tensor, sources: int, r: int,
                   block_bytes: int | None = None) -> MergePlan:
    """Plan merging the `r` source tokens most similar to a destination (cosine of `metric`, (B, N, C));
    `order` (B, N) lists the source positions first (`sources` of them), then the destinations.
    block_bytes: None scores every pair in one product (a graph with fixed shapes); else sources are
    matched in blocks whose (B, block, destinations) scores fit in that many bytes (eager callers)."""
    if not 0 <= r <= sources:
        raise ValueError(f"cannot merge {r} of {sources} source tokens")
    normed = take(F.normalize(metric, dim=-1), order)
    best, best_dst = _best_destinations(normed[:, :sources], normed[:, sources:], block_bytes)
    ranking = best.argsort(dim=-1, descending=True)  # exports as TopK; a stable sort has no ONNX lowering
    return MergePlan(order=order, sources=sources, ranking=ranking, target=best_dst.gather(1, ranking[:, :r]))


def _best_destinations(src: torch.Tensor, dst: torch.Tensor, block_bytes: int | None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best cosine and its destination for every source ((B, Ns, C), (B, Nd, C), unit rows)."""
    batch, count, _ = src.shape
    per_source = batch * dst.shape[1] * src.element_size()
    block = count if block_bytes is None else max(1, block_bytes // per_source)
    dst_t = dst.transpose(1, 2)
    if block >= count:
        return torch.bmm(src, dst_t).max(dim=-1)
    parts = [torch.bmm(src[:, i:i + block], dst_t).max(dim=-1) for i in range(0, count, block)]
    return torch.cat([p.values for p in parts], dim=1), torch.cat([p.indices for p in parts], dim=1)


def merge_tokens(x: torch.Tensor, plan: MergePlan) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, C) → (B, N − r, C) and the merged tokens' masses, for an exported graph."""
    mass = x.new_ones(*x.shape[:2], 1)
    # values and their counts travel as one tensor: one gather and one sum for both
    weighted = torch.cat([x, mass], dim=-1)
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
    return totals[..., :-1] / total_mass.unsqueeze(-1), total_mass


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


def memory_slots(plan: MergePlan, batch: int) -> torch.Tensor:
    """(B·N,) flat output row of every input token in input order: kept sources first in rank
    order, then the destinations; a merged source lands on its destination's row."""
    kept = plan.kept.shape[1]
    rows = plan.dst.shape[1] + kept
    flat = torch.arange(batch * rows, device=plan.order.device).view(batch, rows)
    positions = torch.cat([take(plan.src, plan.ranking), plan.dst], dim=1)
    targets = torch.cat([flat[:, kept:].gather(1, plan.target), flat], dim=1)
    return torch.empty_like(positions).scatter_(1, positions, targets).view(-1)


#: largest block of similarity scores a bank write holds at once (its other temporaries are
#: the memory's size)
MATCH_BLOCK_BYTES = 64 << 20


def merge_memory(values: torch.Tensor, metric_width: int, mass: torch.Tensor, drop: int,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Shrink a memory of n tokens to n − drop by bipartite soft matching on a random partition.

    values: (B, n, C) channel-concatenated values merged with one plan (e.g. keys | values), whose
    first `metric_width` channels are the similarity metric; mass: (B, n) float32. Needs
    drop <= n // 2. Returns the merged values (B, n − drop, C) in float32 (float64 for float64
    values) and masses in float32 (masses exceed float16's range). Every token's mass-weighted
    value is added to its output row with one `index_add_`; a row of mass 0 (emptied slots only)
    comes out 0.
    """
    batch, n, channels = values.shape
    order = random_partition(batch, n, generator, mass.device)
    plan = bipartite_plan(values[..., :metric_width], order, n // 2, drop, MATCH_BLOCK_BYTES)
    rows = n - drop
    slots = memory_slots(plan, batch)
    weighted = (values * mass.unsqueeze(-1)).view(-1, channels)
    totals = weighted.new_zeros(batch * rows, channels).index_add_(0, slots, weighted)
    total_mass = mass.new_zeros(batch * rows).index_add_(0, slots, mass.view(-1))
    merged = totals.div_(total_mass.clamp_min(1e-12).unsqueeze(-1)).view(batch, rows, channels)
    return merged, total_mass.view(batch, rows)
