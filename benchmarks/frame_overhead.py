"""Per-frame work outside the networks: host time and aten ops of the stream maths, the bank and
the conversions, per steady frame (img2img, a video frame that does not write the bank, one that
does). The networks still run, but outside the count and the clock, so only livediff's own work
is measured (on CPU the host time includes executing those ops; on a GPU it is launch overhead). Views (slices, reshapes) are counted among the aten ops and apart:
they launch no kernel on a GPU. Watch it: a bank-writing frame should cost at most ~1.5x the ops
of a non-writing one.

    python benchmarks/frame_overhead.py [--preset sd-turbo-reduced --size 256 --out table.md]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, publish  # noqa: E402
from livediff import load_pipeline  # noqa: E402


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.views = 0
        self.network_s = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func._schema.name] += 1
        self.views += func.is_view
        return func(*args, **(kwargs or {}))


class StandIn:
    """A network replaced by outputs of the right shape, outside the op count."""

    def __init__(self, inner, counter: OpCounter):
        self.inner, self.counter = inner, counter

    def __call__(self, *inputs):
        start = time.perf_counter()
        with torch.utils._python_dispatch._disable_current_modes():
            outputs = self.inner(*inputs)
        self.counter.network_s += time.perf_counter() - start
        return outputs


def measure(pipe, frames: list[torch.Tensor], counter: OpCounter) -> list[tuple[float, int, int]]:
    """(host seconds, aten ops, of which views) per frame."""
    results = []
    for frame in frames:
        counter.ops.clear()
        counter.views = 0
        counter.network_s = 0.0
        start = time.perf_counter()
        with counter:
            pipe(frame, output="tensor")
        results.append((time.perf_counter() - start - counter.network_s, sum(counter.ops.values()), counter.views))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    scenarios = {
        "img2img 2 steps, self CFG": dict(mode="img2img", t_index_list=[32, 45]),
        "video 4 steps, FIFO bank": dict(mode="video", t_index_list=[30, 35, 40, 45],
                                         bank=dict(merge=False, cache_interval=2)),
        "video 4 steps, merged bank": dict(mode="video", t_index_list=[30, 35, 40, 45],
                                           bank=dict(merge=True, cache_interval=2)),
    }
    for name, settings in scenarios.items():
        pipe = load_pipeline(model=args.preset, width=args.size, height=args.size, device="cpu", dtype="float32",
                             cfg_type="self", **settings)
        pipe.prepare(prompt="oil painting", guidance_scale=1.4)
        counter = OpCounter()
        for attribute in ("encode", "decode"):
            setattr(pipe.runners, attribute, StandIn(getattr(pipe.runners, attribute), counter))
        if hasattr(pipe, "banked_unet_runner"):
            pipe.banked_unet_runner = StandIn(pipe.banked_unet_runner, counter)
        else:
            pipe.runners.unet = StandIn(pipe.runners.unet, counter)
        frames = [torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(i))
                  for i in range(args.frames + 3)]
        measured = measure(pipe, frames, counter)[3:]  # steady frames only
        if settings["mode"] == "video":
            interval = settings["bank"]["cache_interval"]
            writing = [m for i, m in enumerate(measured) if (i + 3) % interval == 0]
            other = [m for i, m in enumerate(measured) if (i + 3) % interval != 0]
            groups = {"bank-writing frame": writing, "non-writing frame": other}
        else:
            groups = {"frame": measured}
        for label, values in groups.items():
            ms = sorted(v[0] * 1000 for v in values)[len(values) // 2]
            ops = sorted(v[1] for v in values)[len(values) // 2]
            kernels = sorted(v[1] - v[2] for v in values)[len(values) // 2]
            rows.append([name, label, f"{ms:.1f}", ops, kernels])
    publish(f"Per-frame work outside the networks ({args.preset} {args.size}², CPU, 1 thread)",
            markdown_table(["scenario", "frame", "host ms (median)", "aten ops (median)",
                                 "of which not views (median)"], rows), args.out)


if __name__ == "__main__":
    main()
