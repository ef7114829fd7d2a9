"""How many CPU threads livediff's maths uses (`--threads`).

Measured on a 2-core machine (tiny preset and the SD-2.1-layout `sd-turbo-reduced`, 256², video
mode): idle, 2 threads ran 1.6× faster than 1 (0.86 vs 1.38 s/frame); shared with other work, the
default of one thread per core made a 72-frame job 2–7× slower than one thread, because OpenMP
threads spin waiting for cores that are busy. So `auto` takes the cores that are idle when the
command starts: the cores this process may use minus the 1-minute load average, at least one.
"""
from __future__ import annotations

import argparse
import os

AUTO = "auto"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def idle_cores(cores: int | None = None, load: float | None = None) -> int:
    cores = available_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cores, cores - round(load)))


def parse_threads(text: str) -> int | str:
    """argparse type: `auto` or a whole number in 1..cores available to this process."""
    if text == AUTO:
        return AUTO
    cores = available_cores()
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads {text!r} must be 'auto' or a whole number in 1..{cores}") from None
    if not 1 <= value <= cores:
        raise argparse.ArgumentTypeError(f"--threads {value} is outside 1..{cores} (the cores this process may use)")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=parse_threads, default=AUTO, metavar="N|auto",
                        help="CPU threads for the maths (default auto: the cores idle at start, at least 1; "
                             "one thread is fastest on a machine busy with other work)")


def apply_threads(threads: int | str) -> int:
    """Set torch's and OpenCV's thread pools; ONNX Runtime sessions follow torch's. Returns the count.

    torch is not imported for this: it reads OMP_NUM_THREADS when it is first imported, so a command
    that stops at a mistake before loading a model never waits for torch (an imported torch is set directly)."""
    import sys

    import cv2

    count = idle_cores() if threads == AUTO else int(threads)
    os.environ["OMP_NUM_THREADS"] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    cv2.setNumThreads(count)
    return count
