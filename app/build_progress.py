"""What a person sees while a backend exports or builds a network on first use (ONNX export,
TensorRT engine): minutes of silence look like a hang, so every implicit build says what it is
doing and how long it took. Cache hits stay silent."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

REPEAT_AFTER_S = 10.0


class BuildReporter:
    """A backend `progress(network, message, done, total)` callback that prints short lines."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.clock = clock
        self._started: dict[str, float] = {}
        self._last_line: dict[str, tuple[str, float]] = {}

    def _print(self, text: str) -> None:
        print(f"livediff: {text}", file=self.stream or sys.stderr, flush=True)

    def __call__(self, network: str, message: str, done: int, total: int | None) -> None:
        now = self.clock()
        finished = total is not None and done >= total
        if finished:
            started = self._started.pop(network, None)
            self._last_line.pop(network, None)
            if started is not None:
                self._print(f"{network}: {message} after {now - started:.0f} s (cached for next time)")
            return
        if network not in self._started:
            self._started[network] = now
            self._print(f"{network}: {message} (first use at this size and setting; this takes a while) ...")
            self._last_line[network] = (message, now)
            return
        last_message, last_at = self._last_line.get(network, ("", 0.0))
        if message != last_message and now - last_at >= REPEAT_AFTER_S:
            step = f" {done}/{total}" if total else ""
            self._print(f"{network}: {message}{step} ({now - self._started[network]:.0f} s so far) ...")
            self._last_line[network] = (message, now)
