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
    """One banked layer's per-stage storage: one or two value tensors sharing slots and masses."""

    def __init__(self, entry: BankEntry, count: int, stages: int, device, dtype, generator: torch.Generator):
        self.entry = entry
        self.values = [torch.zeros(stages, entry.capacity, entry.channels, device=device, dtype=dtype)
                       for _ in range(count)]
        self.mass = torch.zeros(stages, entry.capacity, device=device, dtype=torch.float32)
        self.bias = torch.full((stages, entry.capacity), float("-inf"), device=device, dtype=dtype)
        self.static_rank = torch.rand(entry.grid[0] * entry.grid[1], generator=generator).to(device)

    def reset(self) -> None:
        self.mass.zero_()
        self.bias.fill_(float("-inf"))

    def forget_where(self, condition: torch.Tensor) -> None:
        self.mass.masked_fill_(condition, 0.0)
        self.bias.masked_fill_(condition, float("-inf"))

    def tensors(self) -> list[torch.Tensor]:
        return [*self.values, self.bias]

    def write(self, frame: list[torch.Tensor], motion: torch.Tensor | None, stored: int, config: BankConfig,
              generator: torch.Generator) -> torch.Tensor | int:
        """Add one frame (tensors (S, T, C)) to every stage; returns moving tokens dropped by the
        budget (a device tensor for a sparse bank: it is only read when someone asks)."""
        e = self.entry
        mass = torch.ones(frame[0].shape[:2], device=self.mass.device)
        dropped: torch.Tensor | int = 0
        if config.sparse:
            selection = select_tokens(motion, e.grid, e.kept, config.motion_threshold, self.static_rank)
            frame = [take(x, selection.index) for x in frame]
            mass = selection.mass
            dropped = selection.dropped_moving.sum()
        if not config.merge or stored < config.max_frames:
            slot = slice((stored % config.max_frames) * e.kept, (stored % config.max_frames + 1) * e.kept)
            for store, new in zip(self.values, frame):
                store[:, slot].copy_(new)
            self.mass[:, slot].copy_(mass)
        else:
            merged, merged_mass = merge_memory(
                tuple(torch.cat([store, new], dim=1) for store, new in zip(self.values, frame)),
                torch.cat([self.mass, mass], dim=1), torch.cat([self.values[0], frame[0]], dim=1), e.kept, generator)
            target = float(config.max_frames * e.tokens)
            for store, new in zip(self.values, merged):
                store.copy_(new)
            self.mass.copy_(merged_mass * (target / merged_mass.sum(dim=1, keepdim=True)))
        self.bias.copy_(self.mass.log())
        return dropped


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
        self._kv = [_Slots(e, 2, stages, device, dtype, rank_generator) for e in layout.kv]
        self._out = [_Slots(e, 1, stages, device, dtype, rank_generator) for e in layout.out]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self._kv + self._out for t in [*s.values, s.mass, s.bias])

    def reset(self) -> None:
        """Forget every banked frame (slots emptied in place; the merge generator restarts)."""
        for slots in self._kv + self._out:
            slots.reset()
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
        for slots in self._kv + self._out:
            slots.forget_where(condition)

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
        for f in range(frames):
            frame_motion = motion[:, f] if motion is not None else None
            for i, slots in enumerate(self._kv):
                self.dropped_moving += slots.write([entries[2 * i][:, f], entries[2 * i + 1][:, f]], frame_motion,
                                                   self.stored_frames, self.config, self._generator)
            base = 2 * len(self._kv)
            for j, slots in enumerate(self._out):
                self.dropped_moving += slots.write([entries[base + j][:, f]], frame_motion, self.stored_frames,
                                                   self.config, self._generator)
            self.stored_frames += 1

    def frames_in_memory(self) -> int:
        """Frames currently represented: min(written, max_frames)."""
        return min(self.stored_frames, self.config.max_frames)
