"""Two processes build one engine-cache key into an empty cache and finish their builds together,
`--rounds` times; prints how often both used one entry, two different entries, or raised.

    python benchmarks/engine_cache_race.py --rounds 200

Before the check-and-move lock (issue 32 item 12) a builder that found no entry could remove the
other's fresh entry and move its own in, under the other's feet; the test
`tests/test_engine_cache.py::test_a_builder_that_checked_before_another_moved_in_keeps_the_others_entry`
makes that schedule certain, this counts how often real processes hit it.
"""
from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import tempfile
from pathlib import Path

from livediff.accelerators.engine_cache import EngineCache, EngineKey

KEY = EngineKey(kind="onnx", network="unet", model="race", loras=(), weights="w", resolution=(64, 64, 64, 64),
                precision="float32", builder="race")


def builder(root: str, who: int, barrier, queue) -> None:
    def build(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"graph of builder %d" % who)
        barrier.wait(10)

    try:
        entry = EngineCache(root).get_or_build(KEY, build)
        queue.put((who, entry.file("model.onnx").read_bytes()))
    except Exception as exc:  # counted: what a user would have seen
        queue.put((who, type(exc).__name__))


def one_round(context, root: str) -> str:
    barrier, queue = context.Barrier(2), context.Queue()
    processes = [context.Process(target=builder, args=(root, who, barrier, queue)) for who in (1, 2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    got = dict(queue.get() for _ in processes)
    errors = sorted(value for value in got.values() if isinstance(value, str))
    if errors:
        return "raised " + ", ".join(errors)
    return "one entry" if got[1] == got[2] else "two different entries"


def main() -> None:
    parser = argparse.ArgumentParser(description="two builders of one engine-cache key, counted")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    context = mp.get_context("fork")
    outcomes: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            outcomes[one_round(context, f"{tmp}/round-{i}")] += 1
    for outcome, count in outcomes.most_common():
        print(f"{count}/{args.rounds} {outcome}")


if __name__ == "__main__":
    main()
