"""Frames per second and latency of a live stream, shared by the browser UI and `livediff webcam`.

The numbers a person watching a live stream cares about are how often a new restyled picture
appears (fps) and how old the scene in that picture is when it appears (latency), not the time
of one denoiser call. A stream batch with n stages returns the frame it was given n−1 calls
earlier, and the similarity filter may hand back the previous picture again, so latency is
measured for the picture actually delivered:

    latency = time the picture is delivered − time its source frame arrived

where "arrived" is when the frame reached the code that feeds the pipeline (the camera read in
`livediff webcam`, the handler call in the UI: waiting for the shared model is included).

The meter also says when the stream zeroed non-finite values (a float16 overflow, which otherwise
just looks like flat frames): the pipeline counts them on the device (`pipelines.nonfinite`) and the
meter reads that count at most once a second (`NONFINITE_READ_EVERY_S`: each read waits for the device).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from statistics import median
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # the meter imports no torch
    from livediff.pipelines.nonfinite import NonFiniteCounts

NONFINITE_READ_EVERY_S = 1.0


class NonFiniteSource(Protocol):
    """What the meter reads the zeroed non-finite values from (a pipeline's `NonFiniteCount`)."""

    def read(self) -> NonFiniteCounts: ...


@dataclass(frozen=True)
class MeterReading:
    """One snapshot of a stream's speed over the meter's time window: fps from the delivery times,
    latency and compute as medians (one slow warm-up call must not dominate the readout)."""

    fps: float
    latency_ms: float
    compute_ms: float
    frames: int
    dropped: int | None = None
    nonfinite: NonFiniteCounts | None = None

    def format(self) -> str:
        if self.frames == 0:
            return "waiting for frames"
        text = f"{self.fps:.1f} fps · latency {self.latency_ms:.0f} ms · compute {self.compute_ms:.0f} ms"
        if self.dropped is not None:
            text += f" · {self.dropped} stale frames dropped"
        if self.nonfinite is not None and self.nonfinite.values:
            text += f" · {self.nonfinite.format()}"
        return text


class LiveMeter:
    """Sliding-window fps and latency of delivered frames (the last two are always kept, so a
    stream slower than the window still reads its true rate).

    `delay_frames` is the pipeline's stream delay (stages − 1, times frames per call): the picture
    delivered by a call shows the frame that entered that many calls earlier. Thread-safe so a
    display thread can read while the processing thread records.
    """

    def __init__(self, delay_frames: int = 0, window_s: float = 2.0, count_drops: bool = False):
        if delay_frames < 0:
            raise ValueError(f"delay_frames {delay_frames} must be >= 0")
        self.window_s = window_s
        self._count_drops = count_drops
        self._lock = threading.Lock()
        self._delay = delay_frames
        self._nonfinite_source: NonFiniteSource | None = None
        self._nonfinite: tuple[float, NonFiniteCounts] | None = None  # (read at, counts)
        self.reset()

    def reset(self) -> None:
        """Start over (a new stream): the stream delay restarts from an empty buffer."""
        with self._lock:
            self._arrivals: deque[float] = deque(maxlen=self._delay + 1)
            self._shown_arrival: float | None = None
            self._samples: deque[tuple[float, float, float]] = deque()  # (delivered, latency, compute)
            self._frames = 0
            self._dropped = 0

    def set_delay(self, delay_frames: int) -> None:
        if delay_frames != self._delay:
            self._delay = delay_frames
            self.reset()

    def set_dropped(self, total: int) -> None:
        """Frames the source dropped so far (it owns the count: only it sees frames replaced unseen)."""
        with self._lock:
            self._dropped = total

    def watch_nonfinite(self, count: NonFiniteSource | None) -> None:
        """The pipeline's count of zeroed non-finite values, shown by `reading()` (None: the pipeline
        zeroes none). Kept across `reset()`: the count is the pipeline's, since it was built."""
        with self._lock:
            if count is not self._nonfinite_source:
                self._nonfinite_source, self._nonfinite = count, None

    def _nonfinite_counts(self) -> NonFiniteCounts | None:
        """The watched count, read from the device at most every `NONFINITE_READ_EVERY_S`."""
        with self._lock:
            source, last = self._nonfinite_source, self._nonfinite
        if source is None:
            return None
        at = now()
        if last is None or at - last[0] >= NONFINITE_READ_EVERY_S:
            last = (at, source.read())
            with self._lock:
                if source is self._nonfinite_source:
                    self._nonfinite = last
        return last[1]

    def record(self, arrived: float, started: float, delivered: float, advanced: bool = True) -> None:
        """One pipeline call: its frame `arrived`, the call ran from `started` to `delivered`.

        `advanced` is False when the pipeline returned its previous picture (similarity filter
        skip): the picture shown is then as old as the one before it.
        """
        with self._lock:
            if advanced or self._shown_arrival is None:
                self._arrivals.append(arrived)
                self._shown_arrival = self._arrivals[0]
            self._samples.append((delivered, delivered - self._shown_arrival, delivered - started))
            self._frames += 1
            while len(self._samples) > 2 and self._samples[0][0] < delivered - self.window_s:
                self._samples.popleft()

    def reading(self) -> MeterReading:
        with self._lock:
            samples = list(self._samples)
            frames, dropped = self._frames, self._dropped if self._count_drops else None
        nonfinite = self._nonfinite_counts()
        if not samples:
            return MeterReading(0.0, 0.0, 0.0, frames, dropped, nonfinite)
        span = samples[-1][0] - samples[0][0]
        fps = (len(samples) - 1) / span if len(samples) > 1 and span > 0 else 0.0
        latency = median(s[1] for s in samples)
        compute = median(s[2] for s in samples)
        return MeterReading(fps, latency * 1000, compute * 1000, frames, dropped, nonfinite)


def now() -> float:
    """The clock every timestamp given to a meter must come from."""
    return time.perf_counter()
