"""The merged bank's write: equal to its first (one-hot) maths, and counted on the meta device at
SD 2.1's 512² layout, where the one-hot product once cost twice the matching and 1.25 GiB."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from livediff.pipelines.bank import merge
from livediff.pipelines.bank.config import BankConfig
from livediff.pipelines.bank.feature_bank import FeatureBank
from livediff.pipelines.bank.layout import BankEntry, BankLayout
from livediff.pipelines.bank.merge import merge_memory


def reference_merge_memory(values: list[torch.Tensor], mass: torch.Tensor, drop: int, generator: torch.Generator
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The merged memory as first written: permute, score every source/destination pair, rank,
    and sum the merged sources into their destinations with a one-hot product."""
    batch, n = mass.shape
    sources = n // 2
    order = torch.rand(batch, n, generator=generator).argsort(dim=1)
    normed = torch.stack([row[o] for row, o in zip(F.normalize(values[0], dim=-1), order)])
    best, best_dst = torch.bmm(normed[:, :sources], normed[:, sources:].transpose(1, 2)).max(dim=-1)
    ranking = best.argsort(dim=-1, descending=True)
    target = best_dst.gather(1, ranking[:, :drop])
    x = torch.cat(values, dim=-1).float()
    weighted = torch.cat([x * mass.unsqueeze(-1), mass.unsqueeze(-1)], dim=-1)
    permuted = torch.stack([row[o] for row, o in zip(weighted, order)])
    src, dst = permuted[:, :sources], permuted[:, sources:]
    ranked = torch.stack([row[r] for row, r in zip(src, ranking)])
    routes = F.one_hot(target, dst.shape[1]).transpose(1, 2).float()
    totals = torch.cat([ranked[:, drop:], dst + routes @ ranked[:, :drop]], dim=1)
    return totals[..., :-1] / totals[..., -1:].clamp_min(1e-12), totals[..., -1]


def tied_keys(batch: int, n: int, channels: int, g: torch.Generator) -> torch.Tensor:
    """Keys with four ±1 entries: unit norm 2 and cosines in quarters, exact in any summation
    order, so many sources tie for their best destination and many pick the same one."""
    keys = torch.zeros(batch, n, channels)
    slots = torch.rand(batch, n, channels, generator=g).argsort(dim=-1)[..., :4]
    signs = torch.randint(0, 2, (batch, n, 4), generator=g).float() * 2 - 1
    return keys.scatter_(-1, slots, signs)


@pytest.mark.parametrize("drop", [1, 5, 12])
def test_merge_memory_equals_the_one_hot_maths_with_ties_and_shared_destinations(monkeypatch, drop):
    monkeypatch.setattr(merge, "MATCH_BLOCK_BYTES", 3 * 12 * 4)  # blocks of 3 sources: 4 blocks
    g = torch.Generator().manual_seed(0)
    keys = tied_keys(3, 24, 6, g)
    values = torch.randn(3, 24, 5, generator=g)
    mass = torch.rand(3, 24, generator=g) * 4
    mass[0, :6] = 0.0  # emptied slots
    merged, merged_mass = merge_memory(torch.cat([keys, values], dim=-1), 6, mass, drop,
                                       torch.Generator().manual_seed(1))
    expected, expected_mass = reference_merge_memory([keys, values], mass, drop, torch.Generator().manual_seed(1))
    torch.testing.assert_close(merged, expected)
    torch.testing.assert_close(merged_mass, expected_mass)


def test_mass_weighted_merge_is_associative():
    """Merging a mass-3 token equals merging its three originals: masses make repeated merges exact."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    merged, mass = merge_memory(x, 2, torch.tensor([[3.0, 1.0]]), 1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(merged, torch.tensor([[[0.75, 0.25]]]))
    assert mass.tolist() == [[4.0]]


class LargestOutput(TorchDispatchMode):
    """Bytes of the largest tensor an op allocates (views allocate nothing) and of the largest product."""

    def __init__(self):
        super().__init__()
        self.largest = self.largest_product = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    size = t.numel() * t.element_size()
                    self.largest = max(self.largest, size)
                    if func is torch.ops.aten.bmm.default:
                        self.largest_product = max(self.largest_product, size)
        return out


def test_merged_write_at_sd21_512_costs_only_the_matching():
    """SD 2.1 at 512², 4 stages: the five 64×64 self-attention layers (320 channels) are the bulk
    of a write. Once 740 GFLOP with a 1.25 GiB one-hot; now only the matching's products."""
    stages, layers, tokens, channels = 4, 5, 64 * 64, 320
    entries = tuple(BankEntry(layer=f"l{i}", tokens=tokens, grid=(64, 64), channels=channels, kept=tokens,
                              capacity=tokens) for i in range(layers))
    bank = FeatureBank(BankLayout(max_frames=1, kv=entries, out=()), BankConfig(), stages, "meta", torch.float16)
    new = [torch.empty(stages, tokens, channels, device="meta", dtype=torch.float16) for _ in range(2 * layers)]
    bank.update(new)  # the first frame fills the memory; the second merges
    counter, largest = FlopCounterMode(display=False), LargestOutput()
    with counter, largest:
        bank.update(new)
    rows, half = layers * stages, tokens  # (memory + frame) / 2 sources, as many destinations
    matching = 2 * rows * half * half * channels
    assert counter.get_total_flops() == matching  # 214.7 GFLOP (with the one-hot: 3x this)
    joined_float = rows * 2 * tokens * 2 * channels * 4  # keys|values of memory + frame, float32: 400 MiB
    assert largest.largest <= joined_float
    assert largest.largest_product <= merge.MATCH_BLOCK_BYTES


class CopiedBytes(TorchDispatchMode):
    """Output bytes of ops that copy tensor data."""

    COPYING = {"aten::index_select", "aten::cat", "aten::stack", "aten::clone", "aten::copy_", "aten::gather",
               "aten::repeat", "aten::_to_copy", "aten::index"}

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name in self.COPYING:
            written = args[0] if func._schema.name == "aten::copy_" else out
            self.bytes += written.numel() * written.element_size()
        return out


def per_stage_bank(merge_memory_on: bool, stages: int, steady=None) -> FeatureBank:
    entry = BankEntry(layer="l", tokens=12, grid=(3, 4), channels=4, kept=12, capacity=24)
    layout = BankLayout(max_frames=2, kv=(entry,), out=(entry,))
    return FeatureBank(layout, BankConfig(merge=merge_memory_on, max_frames=2), stages, "cpu", torch.float32, steady)


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("cfg_rows,frames", [(0, 1), (0, 2), ("full", 1), ("full", 2), ("initialize", 2)])
def test_steady_calls_read_the_bank_without_a_copy(merged, cfg_rows, frames):
    """full / initialize CFG and F > 1: every row of the steady call reads its stage's bank from the
    storage itself, equal to the per-stage bank gathered row by row (what was copied every frame)."""
    from livediff.pipelines.bank.unet import call_rows

    stages = 3
    stream = stages * frames
    extra = {0: 0, "full": stream, "initialize": frames}[cfg_rows]
    steady = call_rows(0, stages, frames, stream + extra)
    bank, reference = per_stage_bank(merged, stages, steady), per_stage_bank(merged, stages)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):  # fills the memory, then merges (or rolls the FIFO)
        entries = [torch.randn(extra + stream, 12, 4, generator=g) for _ in range(3)]
        bank.update(entries, skip_rows=extra)
        for f in range(frames):  # the reference bank is written frame by frame, like the bank
            reference.update([e[extra:].view(stages, frames, 12, 4)[:, f] for e in entries])
    counter = CopiedBytes()
    with counter:
        rows = bank.rows(steady.stages)
    assert counter.bytes == 0
    assert [t.data_ptr() for t in rows] == [t.data_ptr() for t in bank.tensors()]
    index = torch.tensor(steady.stages)
    for got, expected in zip(rows, reference.tensors()):
        torch.testing.assert_close(got, expected.index_select(0, index))
    with counter:  # the stream rows alone (CFG rows turned off by a guidance scale <= 1): a slice
        bank.rows(steady.stages[extra:])
    assert counter.bytes == 0
