"""Host work under the UI's engine lock per steady webcam frame, and bytes uploaded per frame.

Frames go through the UI's batcher (`app/ui/batcher.py`) into a pipeline on the `meta` device, so
every host tensor of at least a frame's channel (H·W elements) under the lock is the host's own frame
work: the operators on them are timed (wall ms while the lock is held, one thread) and the bytes
copied to the device summed. The caller's thread's host part (checking and stacking the pixels,
canny with `--controlnet canny`) is timed apart: it runs without the lock.

    python benchmarks/engine_lock.py [--size 512 --frames 20 --controlnet canny]
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from livediff import load_pipeline  # noqa: E402
from livediff.app.ui.batcher import LiveBatcher  # noqa: E402


class HostFrameWork(TorchDispatchMode):
    """Time and upload bytes of operators touching host tensors of `elements` elements or more."""

    def __init__(self, elements: int):
        super().__init__()
        self.elements = elements
        self.seconds = 0.0
        self.uploaded = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        hosted = [a for a in args if isinstance(a, torch.Tensor) and a.device.type == "cpu"
                  and a.numel() >= self.elements]
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        if hosted:
            self.seconds += time.perf_counter() - start
            if isinstance(out, torch.Tensor) and out.device.type != "cpu":
                self.uploaded += hosted[0].numel() * hosted[0].element_size()
        return out


class TimedLock:
    """The engine lock, measuring the host frame work of whoever holds it."""

    def __init__(self, elements: int):
        self._lock = threading.Lock()
        self.work = HostFrameWork(elements)

    def __enter__(self):
        self._lock.acquire()
        self.work.__enter__()
        return self

    def __exit__(self, *exc):
        self.work.__exit__(*exc)
        self._lock.release()


class TensorOut:
    """A session's pipeline as the batcher sees it, giving device tensors (meta has no pixels to give back)."""

    def __init__(self, pipe):
        self.pipe = pipe

    def frame_calls(self, frame):
        return self.pipe.frame_calls(frame, output="tensor")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--controlnet", choices=("none", "canny"), default="none")
    args = parser.parse_args()
    torch.set_num_threads(1)
    controlnet = [dict(model="random", preprocessor="canny")] if args.controlnet == "canny" else []
    pipe = load_pipeline(model="tiny", width=args.size, height=args.size, device="meta", dtype="float16",
                         t_index_list=(20, 40), controlnet=controlnet)
    pipe.prepare(prompt="oil painting")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8) for _ in range(args.frames + 3)]
    lock = TimedLock(args.size * args.size)
    batcher = LiveBatcher(lock, wait_s=0.0)  # type: ignore[arg-type]
    session = TensorOut(pipe)
    try:
        for frame in frames[:3]:
            batcher.run("s", session, frame)
        lock.work.seconds, lock.work.uploaded = 0.0, 0
        caller = 0.0
        for frame in frames[3:]:
            start = time.perf_counter()
            path = session.frame_calls(frame)  # the host part, as the batcher's caller does it
            caller += time.perf_counter() - start
            path.close()
            batcher.run("s", session, frame)
    finally:
        batcher.stop()
    n = args.frames
    print(f"{args.size}² frame, controlnet {args.controlnet}, {n} steady frames, 1 thread")
    print(f"host frame work under the engine lock: {1e3 * lock.work.seconds / n:.2f} ms/frame")
    print(f"bytes uploaded under the lock: {lock.work.uploaded // n} per frame "
          f"({lock.work.uploaded / n / (3 * args.size ** 2):.2f}× the uint8 pixels)")
    print(f"host part in the caller's thread (no lock): {1e3 * caller / n:.2f} ms/frame")


if __name__ == "__main__":
    main()
