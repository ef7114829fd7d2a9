"""The bank's state between UNet calls: fixed-size tensors per stage, and how they are updated.

Storage per banked layer, one row per row of the steady UNet call (R rows: S stages, F frames per
stage, and the unconditional CFG rows of `full` / `initialize`, `bank.unet.call_rows`):
    keys/values (R, L, C), bias = log(mass) (R, L) in the model dtype,
and per fusion layer outputs (R, Lo, C) with their bias; the masses (S, L) float32 are kept once
per stage. L = max_frames · kept tokens. A slot of mass 0 is empty (bias −inf: attention and
fusion ignore it). All tensors are allocated once and updated in place, so their addresses and
shapes never change. Rows of one stage hold equal copies: a write updates one row per stage and
copies it to the others, so the steady call reads the storage itself (a copy per write, none per
frame; a per-frame gather would also allocate as much every frame).

Updates (one per written frame, all stages at once — every steady-state call carries every stage):
* sparse bank: each stage's frame first keeps its motion-selected tokens (`sparse.select_tokens`);
* FIFO: the frame overwrites the oldest of `max_frames` slots (a ring: attention does not care
  about slot order), so exactly the last `max_frames` written frames are banked;
* merged: until `max_frames` frames are in, like FIFO; then old memory + new frame (L + kept
  tokens) are merged back to L tokens by bipartite soft matching on a seeded random partition
  (keys as the metric, mass-weighted averages), and the masses are rescaled so the memory always
  weighs `max_frames` frames in attention — older frames fade geometrically instead of dropping out.
"""
from __future__ import annotations

from typing import Any

import torch

from livediff.errors import ConfigError

from livediff.pipelines.bank.config import BankConfig
from livediff.pipelines.bank.layout import BankEntry, BankLayout
from livediff.pipelines.bank.merge import merge_memory, take
from livediff.pipelines.bank.sparse import select_tokens
from livediff.pipelines.bank.unet import RowLayout, call_rows
from livediff.pipelines.generators import device_generator
from livediff.pipelines.stream_state import copy_into, generator_state, set_generator_state
from livediff.pipelines.stream import finite


class _Slots:
    """One banked layer's storage (row layout): views into its `_SlotGroup`'s tensors."""

    def __init__(self, entry: BankEntry, values: list[torch.Tensor], bias: torch.Tensor):
        self.entry, self.values, self.bias = entry, values, bias

    def tensors(self) -> list[torch.Tensor]:
        return [*self.values, self.bias]


class _SlotGroup:
    """Banked layers of equal shape kept in one tensor per value (layer i = rows i·R … i·R+R−1).

    Every write is done per group, never per layer: a call's new entries are stacked once per group
    and then selected, stored or merged for all its layers together, so a bank write costs a few
    operations per distinct layer shape (a handful) instead of a few per layer (dozens). Writes go
    to one row per stage (`stage_values`, `stage_bias`), then `_spread` copies them to the
    stage's other rows. Those views are made once: a write runs copies, not view bookkeeping.
    """

    def __init__(self, entries: list[BankEntry], positions: list[list[int]], rows: RowLayout, device, dtype,
                 generator: torch.Generator):
        first, layers, stages = entries[0], len(entries), len(rows.present)
        self.kept, self.tokens, self.grid, self.stages = first.kept, first.tokens, first.grid, stages
        self.layers, self.row_count, self.extra = layers, len(rows.stages), rows.extra
        self.frames = (self.row_count - rows.extra) // stages
        #: positions[k][i]: index in a call's entry list of value k of layer i
        self.positions = positions
        self.values = [torch.zeros(layers * self.row_count, first.capacity, first.channels, device=device,
                                   dtype=dtype) for _ in positions]
        self.bias = torch.full((layers * self.row_count, first.capacity), float("-inf"), device=device, dtype=dtype)
        self.mass = torch.zeros(layers * stages, first.capacity, device=device, dtype=torch.float32)
        self.dense_mass = torch.ones(layers * stages, first.kept, device=device)
        self.dense_bias = torch.zeros(layers * stages, first.kept, device=device, dtype=dtype)
        # a fixed random ranking of static tokens per layer (sparse bank), one row per layer and stage
        ranks = torch.stack([torch.rand(first.grid[0] * first.grid[1], generator=generator) for _ in entries])
        self.static_rank = ranks.repeat_interleave(stages, dim=0).to(device)
        r = self.row_count
        self.slots = [_Slots(entry, [v[i * r:(i + 1) * r] for v in self.values], self.bias[i * r:(i + 1) * r])
                      for i, entry in enumerate(entries)]
        self.stage_values = [self._stage_rows(v) for v in self.values]
        self.stage_bias = self._stage_rows(self.bias)
        self.stage_mass = self._per_stage(self.mass)
        self.copies = [pair for t in [*self.values, self.bias] for pair in self._spread_pairs(t)]

    @staticmethod
    def key(entry: BankEntry, count: int) -> tuple:
        return count, entry.tokens, entry.kept, entry.capacity, entry.channels, entry.grid

    def _stage_rows(self, t: torch.Tensor) -> torch.Tensor:
        """(layers, S, ...) view of a row-layout tensor: the first stream row of every stage."""
        return t.view(self.layers, self.row_count, *t.shape[1:])[:, self.extra::self.frames]

    def _per_stage(self, t: torch.Tensor) -> torch.Tensor:
        """A (layers·S, ...) tensor as (layers, S, ...)."""
        return t.view(self.layers, self.stages, *t.shape[1:])

    def _spread_pairs(self, t: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(destination, source) views that copy every stage's written row to its other rows: its
        other frames, then its CFG rows (`call_rows`: the CFG rows repeat the first stream rows)."""
        rows = t.view(self.layers, self.row_count, *t.shape[1:])
        pairs = []
        if self.frames > 1:
            per_stage = rows[:, self.extra:].view(self.layers, self.stages, self.frames, *t.shape[1:])
            pairs.append((per_stage[:, :, 1:], per_stage[:, :, :1]))
        if self.extra:
            pairs.append((rows[:, :self.extra], rows[:, self.extra:2 * self.extra]))
        return pairs

    def _spread(self) -> None:
        for destination, source in self.copies:
            destination.copy_(source)

    def stacked(self, entries: list[torch.Tensor], skip_rows: int) -> list[torch.Tensor]:
        """This group's new entries as (layers·S, F, T, C) per value, non-finite values zeroed."""
        out = []
        for index in self.positions:
            x = torch.stack([entries[i] for i in index])
            x = x[:, skip_rows:] if skip_rows else x
            out.append(finite(x).view(self.layers * self.stages, -1, *x.shape[2:]))
        return out

    def select(self, frame: list[torch.Tensor], motion: torch.Tensor | None, config: BankConfig
               ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | int]:
        """The tokens of one frame that go into the bank, their masses, and the moving tokens a
        sparse budget dropped (a device tensor: read only when someone asks)."""
        if not config.sparse:
            return frame, self.dense_mass, 0
        per_row_motion = motion.repeat(len(self.slots), 1, 1)
        selection = select_tokens(per_row_motion, self.grid, self.kept, config.motion_threshold, self.static_rank)
        return [take(x, selection.index) for x in frame], selection.mass, selection.dropped_moving.sum()

    def store(self, frame: list[torch.Tensor], mass: torch.Tensor, stored: int, config: BankConfig) -> None:
        """FIFO: the frame takes the oldest of the `max_frames` slots."""
        first = (stored % config.max_frames) * self.kept
        slot = slice(first, first + self.kept)
        for store, new in zip(self.stage_values, frame):
            store[:, :, slot].copy_(self._per_stage(new))
        self.mass[:, slot].copy_(mass)
        bias = self.dense_bias if mass is self.dense_mass else mass.log()
        self.stage_bias[:, :, slot].copy_(self._per_stage(bias))
        self._spread()

    def reset(self) -> None:
        self.mass.zero_()
        self.bias.fill_(float("-inf"))

    def forget_where(self, condition: torch.Tensor) -> None:
        self.mass.masked_fill_(condition, 0.0)
        self.bias.masked_fill_(condition, float("-inf"))

    def merge(self, frame: list[torch.Tensor], mass: torch.Tensor, config: BankConfig,
              generator: torch.Generator | None) -> None:
        """Old memory + the new frame → the memory's size, every layer of the group in one merge.
        Memory and frame are copied once, side by side, into the channel-concatenated tensor the
        merge works on."""
        capacity, widths = self.mass.shape[1], [v.shape[-1] for v in self.values]
        joined = self.values[0].new_empty(self.layers, self.stages, capacity + self.kept, sum(widths))
        memory, arriving = joined[:, :, :capacity].split(widths, -1), joined[:, :, capacity:].split(widths, -1)
        for store, new, old_part, new_part in zip(self.stage_values, frame, memory, arriving):
            old_part.copy_(store)
            new_part.copy_(self._per_stage(new))
        merged, merged_mass = merge_memory(joined.view(self.layers * self.stages, -1, sum(widths)), widths[0],
                                           torch.cat([self.mass, mass], dim=1), self.kept, generator)
        for store, part in zip(self.stage_values, self._per_stage(merged).split(widths, -1)):
            store.copy_(part)
        target = float(config.max_frames * self.tokens)
        torch.mul(merged_mass, target / merged_mass.sum(dim=1, keepdim=True), out=self.mass)
        torch.log(self.stage_mass, out=self.stage_bias)
        self._spread()


class FeatureBank:
    """Per-stage memory of earlier frames' self-attention keys/values and attention outputs.

    `rows(stages)` gives the bank inputs of a UNet call (see `pipelines.bank.layout`), each row
    reading its own stage; `update(entries, motion)` writes one call's new entries. `steady`: the
    rows of the steady UNet call the storage is laid out for (default: one row per stage).
    """

    def __init__(self, layout: BankLayout, config: BankConfig, stages: int, device, dtype,
                 steady: RowLayout | None = None):
        steady = steady or call_rows(0, stages, 1, stages)
        if steady.present != tuple(range(stages)):
            raise ValueError(f"the steady call must carry every one of the {stages} stages, got {steady.present}")
        self.layout = layout
        self.config = config
        self.stages = stages
        self.steady = steady
        self.stored_frames = 0
        self.dropped_moving: torch.Tensor | int = 0
        # the merge partition is drawn where the bank lives: a CPU draw would be a copy every write
        self._generator = device_generator(device, config.seed)
        rank_generator = torch.Generator("cpu").manual_seed(config.seed + 1)
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}
        members: dict[tuple, list[tuple[BankEntry, list[int]]]] = {}
        base = 2 * len(layout.kv)
        for i, entry in enumerate(layout.kv):
            members.setdefault(_SlotGroup.key(entry, 2), []).append((entry, [2 * i, 2 * i + 1]))
        for j, entry in enumerate(layout.out):
            members.setdefault(_SlotGroup.key(entry, 1), []).append((entry, [base + j]))
        self._groups = [_SlotGroup([e for e, _ in group], [list(p) for p in zip(*(p for _, p in group))],
                                   steady, device, dtype, rank_generator)
                        for group in members.values()]
        self._entry_count = base + len(layout.out)
        by_entry = {id(slots.entry): slots for group in self._groups for slots in group.slots}
        self._kv = [by_entry[id(e)] for e in layout.kv]
        self._out = [by_entry[id(e)] for e in layout.out]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for g in self._groups for t in [*g.values, g.mass, g.bias])

    def reset(self) -> None:
        """Forget every banked frame (slots emptied in place; the merge generator restarts)."""
        for group in self._groups:
            group.reset()
        self.stored_frames = 0
        self.dropped_moving = 0
        if self._generator is not None:
            self._generator.manual_seed(self.config.seed)

    def state(self) -> dict[str, Any]:
        """The banked frames as plain data (`pipelines.stream_state`): every group's storage and
        masses, the write count (FIFO slot, merge or store) and the merge generator's position."""
        dropped = self.dropped_moving
        return {"groups": [[t.clone() for t in (*g.values, g.bias, g.mass)] for g in self._groups],
                "stored_frames": self.stored_frames,
                "dropped_moving": dropped.clone() if isinstance(dropped, torch.Tensor) else dropped,
                "generator": generator_state(self._generator)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Put `state()` back, in place: the storage keeps its addresses (graphs and views read it)."""
        groups = state["groups"]
        if len(groups) != len(self._groups):
            raise ConfigError(f"the saved bank has {len(groups)} layer groups, this one {len(self._groups)}; load "
                              f"a state saved with the same bank settings")
        for group, saved in zip(self._groups, groups):
            for i, (target, tensor) in enumerate(zip((*group.values, group.bias, group.mass), saved, strict=True)):
                copy_into(target, tensor, f"bank tensor {i}")
        self.stored_frames = state["stored_frames"]
        self.dropped_moving = state["dropped_moving"]
        set_generator_state(self._generator, state["generator"])

    def tensors(self) -> list[torch.Tensor]:
        """The storage in layout order (axis 0 = the steady call's rows)."""
        return [t for slots in self._kv + self._out for t in slots.tensors()]

    def rows(self, stages: tuple[int, ...]) -> list[torch.Tensor]:
        """Bank inputs for a call whose row b is at stage `stages[b]`: the storage itself for the
        steady call, a slice of it for a run of its rows (warm-up, CFG rows turned off), else a
        gathered copy (another layout: a warm-up with CFG rows, a live change of the CFG mode)."""
        storage = self.tensors()
        laid_out = self.steady.stages
        if stages == laid_out:
            return storage
        for start in range(len(laid_out) - len(stages) + 1):
            if laid_out[start:start + len(stages)] == stages:
                return [t[start:start + len(stages)] for t in storage]
        if stages not in self._indices:  # a handful of layouts per stream: made once, on the device
            rows = [laid_out.index(stage, self.steady.extra) for stage in stages]
            self._indices[stages] = torch.tensor(rows, device=storage[0].device)
        return [t.index_select(0, self._indices[stages]) for t in storage]

    def forget_where(self, condition: torch.Tensor) -> None:
        """Empty every slot where the 0-d bool `condition` holds, without reading it back."""
        for group in self._groups:
            group.forget_where(condition)

    @torch.no_grad()
    def update(self, entries: list[torch.Tensor], motion: torch.Tensor | None = None, skip_rows: int = 0) -> None:
        """Write the new frames of one call.

        entries: the call's new-entry outputs in layout order, (skip_rows + S·F, T, C) each: the
        first `skip_rows` rows (unconditional CFG rows) are not banked, the rest are the stream rows,
        F frames per stage; motion: (S, F, h, w) latent motion of each written frame, required for
        a sparse bank. Frames are written in order f = 0..F−1.
        """
        if len(entries) != self._entry_count:
            raise ValueError(f"expected {self._entry_count} entry tensors, got {len(entries)}")
        if self.config.sparse and motion is None:
            raise ValueError("a sparse bank needs the motion of the written frames")
        if not entries:
            return
        stacked = [group.stacked(entries, skip_rows) for group in self._groups]
        merging = self.config.merge
        for f in range(stacked[0][0].shape[1]):
            frame_motion = motion[:, f] if motion is not None else None
            for group, values in zip(self._groups, stacked):
                frame, mass, dropped = group.select([v[:, f] for v in values], frame_motion, self.config)
                self.dropped_moving = self.dropped_moving + dropped
                if merging and self.stored_frames >= self.config.max_frames:
                    group.merge(frame, mass, self.config, self._generator)
                else:
                    group.store(frame, mass, self.stored_frames, self.config)
            self.stored_frames += 1
