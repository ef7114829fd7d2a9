"""Helpers shared by the benchmark scripts: synthetic frames, timing, tables."""
from __future__ import annotations

import statistics
from pathlib import Path
import time
from dataclasses import dataclass

import numpy as np
import torch


def moving_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """A textured background panning right with a bright square moving across: known, smooth motion."""
    rng = np.random.default_rng(seed)
    texture = (rng.random((height, width * 2, 3)) * 255).astype(np.uint8)
    frames = []
    for i in range(count):
        shift = (2 * i) % width
        frame = texture[:, shift:shift + width].copy()
        x = (5 * i) % max(1, width - height // 4)
        frame[height // 3:height // 3 + height // 4, x:x + height // 4] = (250, 220, 40)
        frames.append(frame)
    return frames


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@dataclass
class Timing:
    seconds: list[float]

    @property
    def fps(self) -> float:
        return len(self.seconds) / sum(self.seconds)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))] * 1000


def time_interleaved(contenders: dict, inputs: list, device: str = "cpu", warmup: int = 3,
                     progress=None) -> dict[str, Timing]:
    """Every contender (name → fn(input)) on each input in turn, so all see the same machine load
    (a neighbour's burst or a thermal step hits them alike); the first `warmup` inputs are untimed."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for i, item in enumerate(inputs):
        for name, fn in contenders.items():
            synchronize(device)
            start = time.perf_counter()
            fn(item)
            synchronize(device)
            if i >= warmup:
                seconds[name].append(time.perf_counter() - start)
        if progress is not None:
            progress(f"round {i + 1}/{len(inputs)}")
    return {name: Timing(values) for name, values in seconds.items()}


def unet_gflops(pipe) -> float:
    """GFLOPs of one stream UNet call of `pipe` (one row per stage; ControlNets and the IP-Adapter
    included) for a pipeline built on the `meta` device, where attention runs as plain matrix
    products PyTorch's FLOP counter sees (on the CPU the fused attention kernel is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    from livediff.networks import stream_networks

    unet = stream_networks(pipe.models)["unet"]
    size = pipe.config.height, pipe.config.width
    inputs = unet.example_inputs(len(pipe.settings.t_index_list), *size, torch.float16, "meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(*inputs)
    return counter.get_total_flops() / 1e9


def time_calls(fn, inputs, device: str, warmup: int = 3) -> Timing:
    for item in inputs[:warmup]:
        fn(item)
    synchronize(device)
    seconds = []
    for item in inputs[warmup:]:
        start = time.perf_counter()
        fn(item)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(seconds)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(title: str, table: str, out: str | None) -> None:
    """Print the table under its title (what was measured, where) and write both to `out` when given."""
    text = f"{title}\n\n{table}\n"
    print(text, end="")
    if out:
        Path(out).write_text(text)
