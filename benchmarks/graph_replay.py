"""CUDA-graph replay counted on the CPU (capture emulated: `tests/test_accelerators.GraphedRunner`):

* replays per steady network call, 1..8 sessions sharing runs (tiny video, 64²): every steady call
  should be a replay; the row counts the `compile` backend captures are `BuildTarget.steady_rows_for`
  (`--one-session-rows`: only one session's row count, as before runs shared by sessions had graphs);
* bytes copied per steady call of the banked UNet (on the meta device: shapes only, no data), and
  the bytes of its outputs, which a replay hands out without copying them.

    python benchmarks/graph_replay.py [--preset sd-turbo-random --size 512 --out table.md]
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchmarks.common import markdown_table, publish  # noqa: E402
from livediff import load_pipeline  # noqa: E402
from livediff.accelerators.eager import EagerBackend  # noqa: E402
from livediff.pipelines.batching import run_together  # noqa: E402
from livediff.pipelines.runners import build_target  # noqa: E402
from test_accelerators import GraphedRunner  # noqa: E402

MIB = 2 ** 20


class CopiedBytes(TorchDispatchMode):
    """Bytes written by copies (`copy_`, `clone`) inside the block."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._schema.name.split("::")[-1] in ("copy_", "clone"):
            self.bytes += out.numel() * out.element_size()
        return out


class StaticRowsEager(EagerBackend):
    static_rows = True  # shared runs padded as for `compile`


def replays_per_steady_call(one_session_rows: bool) -> list[float]:
    """For k = 1..8 sessions: replays / network calls over two steady frames."""
    size = 64
    base = load_pipeline(model="tiny", mode="video", t_index_list=[20, 40], cfg_type="self", width=size, height=size,
                         device="cpu", dtype="float32", max_sessions=8, bank=dict(cache_interval=2))
    base.runners = replace(base.runners, backend=StaticRowsEager())
    target = build_target(base.config)
    runners, counting = [], []
    for owner, name in ((base.runners, "encode"), (base.runners, "decode"), (base, "banked_unet_runner")):
        named = getattr(owner, name)
        function = named.function
        rows = (target.rows_for(function).opt,) if one_session_rows else target.steady_rows_for(function)
        runners.append(GraphedRunner(function, rows, function.state_inputs()))
        counting.append(CountingCalls(runners[-1]))
        setattr(owner, name, replace(named, run=counting[-1]))
    unet = base.banked_unet_runner
    ratios = []
    for k in range(1, 9):
        sessions = [base.new_session(seed=s) for s in range(k)]
        for session in sessions:
            session.prepare(prompt="oil painting", guidance_scale=1.4)
            session.banked_unet_runner = unet
        for i in range(5):
            if i == 3:  # the last two frames are steady
                calls, replays = sum(c.calls for c in counting), sum(r.replays for r in runners)
            paths = [s.frame_calls(torch.rand(1, 3, size, size), output="tensor") for s in sessions]
            for outcome in run_together(paths):
                outcome.get()
        ratios.append((sum(r.replays for r in runners) - replays) / (sum(c.calls for c in counting) - calls))
    return ratios


class CountingCalls:
    def __init__(self, inner: GraphedRunner):
        self.inner, self.function, self.calls = inner, inner.function, 0

    def __call__(self, *inputs):
        self.calls += 1
        return self.inner(*inputs)


def banked_unet_bytes(preset: str, size: int) -> tuple[int, int, int]:
    """(bytes copied per steady replay, bytes of its outputs, number of outputs) on meta."""
    pipe = load_pipeline(model=preset, mode="video", t_index_list=[30, 35, 40, 45], cfg_type="self", width=size,
                         height=size, device="meta", dtype="float16")
    function = pipe.banked_unet_runner.function
    runner = GraphedRunner(function, None, function.state_inputs())
    inputs = function.example_inputs(4, size, size, torch.float16, "meta")
    for _ in range(2):
        runner(*inputs)  # eager, then captured
    counter = CopiedBytes()
    with counter:
        outputs = runner(*inputs)
    return counter.bytes, sum(t.numel() * t.element_size() for t in outputs.values()), len(outputs.values())


def main() -> None:
    parser = argparse.ArgumentParser(description="CUDA-graph replay counted on the CPU (capture emulated)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--one-session-rows", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ratios = replays_per_steady_call(args.one_session_rows)
    copied, outputs, count = banked_unet_bytes(args.preset, args.size)
    rows = [[f"replays per steady call, {k} session(s)", f"{r:.2f}"] for k, r in enumerate(ratios, 1)]
    rows += [[f"banked UNet ({args.preset} {args.size}², 4 rows): bytes copied per steady call", f"{copied / MIB:.1f} MiB"],
             [f"its outputs, handed out uncopied ({count} tensors)", f"{outputs / MIB:.1f} MiB"]]
    publish("CUDA-graph replay, counted on the CPU (capture emulated)", markdown_table(["measure", "value"], rows),
            args.out)


if __name__ == "__main__":
    main()
