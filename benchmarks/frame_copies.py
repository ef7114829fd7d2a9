"""Bytes copied per steady video frame outside the networks: the output bytes of every copying op
(cat, stack, index_select, gather, clone, copy_, repeat, conversions...) a frame runs, next to the
bytes of the network calls' own inputs and outputs (each storage once). The networks still run, but
outside the count, so only livediff's own copies are measured. One session for every CFG mode with
1 and 2 frames per stage, and two sessions sharing their runs (`pipelines.batching.run_together`).
Medians over steady frames (bank writes, every `cache_interval`-th frame, are apart: `--write`).

    python benchmarks/frame_copies.py [--preset sd-turbo-reduced --size 256 --out table.md]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, publish  # noqa: E402
from livediff import load_pipeline  # noqa: E402
from livediff.pipelines.batching import run_together  # noqa: E402

COPYING = {"cat", "stack", "index_select", "gather", "clone", "copy_", "repeat", "repeat_interleave", "_to_copy",
           "index", "contiguous", "new_zeros", "scatter", "masked_select", "take"}

MIB = 2 ** 20


def _bytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


class CopyCounter(TorchDispatchMode):
    """Output bytes of copying ops, by op name (for copy_: the bytes written)."""

    def __init__(self):
        super().__init__()
        self.copied: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if name in COPYING:
            written = args[0] if name == "copy_" else out
            self.copied[name] += sum(_bytes(t) for t in (written if isinstance(written, (tuple, list)) else [written]))
        return out


class StandIn:
    """A network run outside the count; adds the bytes of its inputs and outputs (each storage once)."""

    def __init__(self, inner, io: list[int]):
        self.inner, self.io = inner, io

    def __call__(self, *inputs):
        with _disable_current_modes():
            outputs = self.inner(*inputs)
        tensors = [*inputs, *(outputs.values() if hasattr(outputs, "values") else [outputs])]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in tensors if isinstance(t, torch.Tensor)}
        self.io[0] += sum(storages.values())
        return outputs


def sessions(preset: str, size: int, cfg: str, frames: int, count: int, io: list[int]) -> list:
    """`count` sessions over the same networks (`new_session`), each network run outside the count."""
    base = load_pipeline(model=preset, width=size, height=size, device="cpu", dtype="float32", mode="video",
                         t_index_list=[30, 35, 40, 45], cfg_type=cfg, frame_buffer_size=frames)
    pipes = [base] + [base.new_session(seed=k) for k in range(1, count)]
    for pipe in pipes:
        pipe.prepare(prompt="oil painting", guidance_scale=1.4)
        for attribute in ("encode", "decode"):
            named = getattr(pipe.runners, attribute)
            if not isinstance(named.run, StandIn):  # sessions share their runners
                setattr(pipe.runners, attribute, replace(named, run=StandIn(named.run, io)))
        pipe.banked_unet_runner = replace(pipe.banked_unet_runner, run=StandIn(pipe.banked_unet_runner.run, io))
    return pipes


def measure(sessions, size: int, frames: int, count: int) -> list[tuple[int, int, bool]]:
    """(bytes copied, network I/O bytes, bank written) per frame of every session together."""
    io = sessions[0].banked_unet_runner.run.io
    results = []
    for i in range(count):
        images = [torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(i)) for _ in sessions]
        counter = CopyCounter()
        io[0] = 0
        written = [pipe.bank.stored_frames for pipe in sessions]
        with counter, torch.no_grad():
            if len(sessions) == 1:
                sessions[0](images[0], output="tensor")
            else:
                for outcome in run_together([p.frame_calls(x, output="tensor") for p, x in zip(sessions, images)]):
                    outcome.get()
        wrote = any(pipe.bank.stored_frames != w for pipe, w in zip(sessions, written))
        results.append((sum(counter.copied.values()), io[0], wrote))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="Bytes copied per steady video frame outside the networks.")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=12, help="steady frames measured (after 8 warm-up frames)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    scenarios = [(f"1 session, cfg {cfg}, F={f}", cfg, f, 1) for f in (1, 2)
                 for cfg in ("none", "self", "full", "initialize")]
    scenarios.append(("2 sessions sharing runs, cfg self, F=1", "self", 1, 2))
    rows = []
    for name, cfg, frames, count in scenarios:
        io: list[int] = [0]
        steady = measure(sessions(args.preset, args.size, cfg, frames, count, io), args.size, frames,
                         8 + args.frames)[8:]
        plain = [r for r in steady if not r[2]]
        writing = [r for r in steady if r[2]]
        rows.append([name, f"{statistics.median(r[0] for r in plain) / MIB:.2f}",
                     f"{statistics.median(r[0] for r in writing) / MIB:.2f}",
                     f"{statistics.median(r[1] for r in plain) / MIB:.2f}"])
    publish(f"Bytes copied per steady frame outside the networks ({args.preset} {args.size}², video, 4 stages, "
            f"merged bank)",
            markdown_table(["scenario", "MiB copied (frame)", "MiB copied (bank-writing frame)",
                            "MiB network inputs+outputs (frame)"], rows), args.out)


if __name__ == "__main__":
    main()
