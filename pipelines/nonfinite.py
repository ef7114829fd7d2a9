"""How many non-finite values the stream zeroed, counted on the device.

The stream batch replaces NaN and ±inf in each call's prediction and denoised latents by 0 (`stream.finite`)
so one float16 overflow cannot poison the stream; without a count, the frames it touched just look
flat. `NonFiniteCount` adds each call's count to a device tensor (no host read in the frame path);
`read()` is the one host read, made only where stats are shown (the live meter at most once a second,
`livediff ui --stats`, the UI's server stats, `livediff doctor`).

Two numbers, both cumulative since the pipeline was built: `values`, the latent values zeroed (where the
prediction or the denoised latent was not finite), and `frame_stages`, the UNet rows that had any —
one row is one frame at one stage, so a frame that overflows at every one of n stages counts n. Frame
stages say how much of the video was hit; values say how badly (a whole row is 4·h·w latent values).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch


class NonFiniteCounts(NamedTuple):
    values: int
    frame_stages: int

    def format(self) -> str:
        return f"{self.values} non-finite values zeroed in {self.frame_stages} frame-stages"


class NonFiniteCount:
    """The stream's running count of zeroed values, a (2,) int64 tensor on the device."""

    def __init__(self, device: torch.device | str):
        self.counts = torch.zeros(2, dtype=torch.int64, device=device)

    def add(self, *tensors: torch.Tensor) -> None:
        """Count the positions (rows first) where any of `tensors` (one shape) is not finite. x − x is 0
        exactly where x is finite (inf − inf and NaN give NaN), so one sum of those differences marks
        them all: 2 operators per tensor where `torch.isfinite` and a negation take 5 (10 kernels per
        frame fewer; `benchmarks/frame_overhead.py` counts operators per frame)."""
        residue = functools.reduce(torch.add, (t - t for t in tensors))
        bad = residue != 0
        self.counts += torch.stack((bad.sum(), bad.flatten(1).any(dim=1).sum()))

    def read(self) -> NonFiniteCounts:
        """The counts on the host: waits for the device's queued work (call it only to show them)."""
        values, frame_stages = self.counts.tolist()
        return NonFiniteCounts(values, frame_stages)
