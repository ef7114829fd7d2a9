"""The bank's state between UNet calls: fixed-size tensors per stage, and how they are updated.

Storage per banked layer and stage s (S = number of stages):
    keys/values (S, L, C), mass (S, L) float32, bias = log(mass) (S, L) in the model dtype,
and per fusion layer outputs (S, Lo, C) with their mass and bias. L = max_frames · kept tokens.
A slot of mass 0 is empty (bias −inf: attention and fusion ignore it). All tensors are allocated
once and updated in place, so their addresses and shapes never change.

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

import torch

from livediff.pipelines.bank.config import BankConfig
from livediff.pipelines.bank.layout import BankEntry, BankLayout
from livediff.pipelines.bank.merge import merge_memory, take
from livediff.pipelines.bank.sparse import select_tokens
from livediff.pipelines.generators import device_generator


class _Slots:
    """One banked layer's per-stage storage: one or two value tensors sharing slots and masses
    (views into its `_SlotGroup`'s storage)."""

    def __init__(self, entry: BankEntry, values: list[torch.Tensor], mass: torch.Tensor, bias: torch.Tensor,
                 static_rank: torch.Tensor):
        self.entry, self.values, self.mass, self.bias, self.static_rank = entry, values, mass, bias, static_rank

    def tensors(self) -> list[torch.Tensor]:
        return [*self.values, self.bias]

    def select(self, frame: list[torch.Tensor], motion: torch.Tensor | None, config: BankConfig
               ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | int]:
        """The tokens of one frame (tensors (S, T, C)) that go into the bank, their masses, and the
        moving tokens a sparse budget dropped (a device tensor: read only when someone asks)."""
        mass = torch.ones(frame[0].shape[:2], device=self.mass.device)
        if not config.sparse:
            return frame, mass, 0
        selection = select_tokens(motion, self.entry.grid, self.entry.kept, config.motion_threshold, self.static_rank)
        return [take(x, selection.index) for x in frame], selection.mass, selection.dropped_moving.sum()

    def store(self, frame: list[torch.Tensor], mass: torch.Tensor, stored: int, config: BankConfig) -> None:
        """FIFO: the frame takes the oldest of the `max_frames` slots."""
        kept = self.entry.kept
        slot = slice((stored % config.max_frames) * kept, (stored % config.max_frames + 1) * kept)
        for store, new in zip(self.values, frame):
            store[:, slot].copy_(new)
        self.mass[:, slot].copy_(mass)
        self.bias.copy_(self.mass.log())


class _SlotGroup:
    """Banked layers of equal shape kept in one tensor per value (layer i = rows i·S … i·S+S−1), so
    a merged-memory write, a reset and a scene cut are one operation for all of them instead of one
    per layer (a bank write would otherwise be hundreds of small ops every few frames)."""

    def __init__(self, entries: list[BankEntry], count: int, stages: int, device, dtype,
                 generator: torch.Generator):
        first, rows = entries[0], len(entries) * stages
        self.kept, self.tokens = first.kept, first.tokens
        self.values = [torch.zeros(rows, first.capacity, first.channels, device=device, dtype=dtype)
                       for _ in range(count)]
        self.mass = torch.zeros(rows, first.capacity, device=device, dtype=torch.float32)
        self.bias = torch.full((rows, first.capacity), float("-inf"), device=device, dtype=dtype)
        self.slots = []
        for i, entry in enumerate(entries):
            part = slice(i * stages, (i + 1) * stages)
            rank = torch.rand(entry.grid[0] * entry.grid[1], generator=generator).to(device)
            self.slots.append(_Slots(entry, [v[part] for v in self.values], self.mass[part], self.bias[part], rank))

    @staticmethod
    def key(entry: BankEntry, count: int) -> tuple:
        return count, entry.tokens, entry.kept, entry.capacity, entry.channels

    def reset(self) -> None:
        self.mass.zero_()
        self.bias.fill_(float("-inf"))

    def forget_where(self, condition: torch.Tensor) -> None:
        self.mass.masked_fill_(condition, 0.0)
        self.bias.masked_fill_(condition, float("-inf"))

    def merge(self, frames: list[list[torch.Tensor]], masses: list[torch.Tensor], config: BankConfig,
              generator: torch.Generator | None) -> None:
        """Old memory + one new frame per layer → the memory's size, all layers in one merge."""
        new = [torch.cat([frame[k] for frame in frames]) for k in range(len(self.values))]
        merged, merged_mass = merge_memory(
            tuple(torch.cat([store, n], dim=1) for store, n in zip(self.values, new)),
            torch.cat([self.mass, torch.cat(masses)], dim=1), torch.cat([self.values[0], new[0]], dim=1),
            self.kept, generator)
        for store, values in zip(self.values, merged):
            store.copy_(values)
        target = float(config.max_frames * self.tokens)
        self.mass.copy_(merged_mass * (target / merged_mass.sum(dim=1, keepdim=True)))
        self.bias.copy_(self.mass.log())


class FeatureBank:
    """Per-stage memory of earlier frames' self-attention keys/values and attention outputs.

    `rows(stage)` gives the bank inputs of a UNet call (see `pipelines.bank.layout`), each row
    reading its own stage; `update(entries, motion)` writes one call's new entries.
    """

    def __init__(self, layout: BankLayout, config: BankConfig, stages: int, device, dtype):
        self.layout = layout
        self.config = config
        self.stages = stages
        self.stored_frames = 0
        self.dropped_moving: torch.Tensor | int = 0
        # the merge partition is drawn where the bank lives: a CPU draw would be a copy every write
        self._generator = device_generator(device, config.seed)
        rank_generator = torch.Generator("cpu").manual_seed(config.seed + 1)
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}
        members: dict[tuple, list[BankEntry]] = {}
        for count, entries in ((2, layout.kv), (1, layout.out)):
            for entry in entries:
                members.setdefault(_SlotGroup.key(entry, count), []).append(entry)
        self._groups = [_SlotGroup(entries, key[0], stages, device, dtype, rank_generator)
                        for key, entries in members.items()]
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

    def tensors(self) -> list[torch.Tensor]:
        """The per-stage storage in layout order (axis 0 = stage)."""
        return [t for slots in self._kv + self._out for t in slots.tensors()]

    def rows(self, stages: tuple[int, ...]) -> list[torch.Tensor]:
        """Bank inputs for a call whose row b is at stage `stages[b]` (the storage itself when the
        rows are exactly the stages in order, else a gathered copy)."""
        storage = self.tensors()
        if stages == tuple(range(self.stages)):
            return storage
        if stages not in self._indices:  # a handful of layouts per stream: made once, on the device
            self._indices[stages] = torch.tensor(stages, device=storage[0].device)
        return [t.index_select(0, self._indices[stages]) for t in storage]

    def forget_where(self, condition: torch.Tensor) -> None:
        """Empty every slot where the 0-d bool `condition` holds, without reading it back."""
        for group in self._groups:
            group.forget_where(condition)

    @torch.no_grad()
    def update(self, entries: list[torch.Tensor], motion: torch.Tensor | None = None) -> None:
        """Write the new frames of one call.

        entries: the call's new-entry outputs in layout order, as (S, F, T, C) (stream rows only);
        motion: (S, F, h, w) latent motion of each written frame, required for a sparse bank.
        Frames are written in order f = 0..F−1.
        """
        if len(entries) != 2 * len(self._kv) + len(self._out):
            raise ValueError(f"expected {2 * len(self._kv) + len(self._out)} entry tensors, got {len(entries)}")
        if self.config.sparse and motion is None:
            raise ValueError("a sparse bank needs the motion of the written frames")
        frames = entries[0].shape[1] if entries else 0
        layers = [(slots, [entries[2 * i], entries[2 * i + 1]]) for i, slots in enumerate(self._kv)]
        base = 2 * len(self._kv)
        layers += [(slots, [entries[base + j]]) for j, slots in enumerate(self._out)]
        for f in range(frames):
            frame_motion = motion[:, f] if motion is not None else None
            chosen = {}
            for slots, tensors in layers:
                frame, mass, dropped = slots.select([t[:, f] for t in tensors], frame_motion, self.config)
                self.dropped_moving = self.dropped_moving + dropped
                chosen[id(slots)] = (frame, mass)
            if self.config.merge and self.stored_frames >= self.config.max_frames:
                for group in self._groups:
                    group.merge([chosen[id(slots)][0] for slots in group.slots],
                                [chosen[id(slots)][1] for slots in group.slots], self.config, self._generator)
            else:
                for slots, _ in layers:
                    slots.store(*chosen[id(slots)], self.stored_frames, self.config)
            self.stored_frames += 1

    def frames_in_memory(self) -> int:
        """Frames currently represented: min(written, max_frames)."""
        return min(self.stored_frames, self.config.max_frames)
