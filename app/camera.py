"""A local camera (OpenCV) read on its own thread into a one-frame slot, for `livediff webcam`.

The camera delivers frames at its own rate whatever the model's speed. Reading on a separate
thread into a slot that holds only the newest frame means the model always gets the freshest
picture and a slow model never builds a backlog: a frame not taken before the next one arrives is
dropped (and counted). A video file can stand in for a camera (tests, demos); it is paced at its
own frame rate and, like a camera, keeps delivering: it starts again at its end (`loop=False`
plays it once).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from livediff.errors import InputError


@dataclass(frozen=True)
class Grabbed:
    rgb: np.ndarray
    at: float  # `app.live_metrics.now()` when the frame was read


class LatestFrame:
    """A one-frame slot: `put` replaces what is there (counting it as dropped), `take` waits for a new frame."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Grabbed | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: Grabbed) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float | None = None) -> Grabbed | None:
        """The newest frame not yet taken; None once the source is closed and drained (or on timeout)."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def parse_source(text: str) -> int | str:
    """`0`, `1`, ... is a camera index; anything else a video file or stream URL OpenCV can open."""
    return int(text) if text.isdigit() else text


class CameraReader:
    """Opens the source and fills a `LatestFrame` from a daemon thread until `stop()` or end of file."""

    def __init__(self, source: int | str, clock=time.perf_counter, loop: bool = True):
        self.source = source
        self._clock = clock
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            what = f"camera {source}" if isinstance(source, int) else f"video source {source!r}"
            hint = " (is a camera connected, and not in use by another program?)" if isinstance(source, int) else ""
            raise InputError(f"{what} cannot be opened{hint}")
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self._is_file = isinstance(source, str) and Path(source).is_file()
        self._loop = loop and self._is_file
        self.loops = 0
        self._interval = 1.0 / fps if self._is_file and fps and fps > 0 else 0.0
        self.slot = LatestFrame()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="livediff-camera", daemon=True)

    def start(self) -> "CameraReader":
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = self._clock()
        try:
            while not self._stop.is_set():
                ok, bgr = self._capture.read()
                if not ok and self._loop and self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
                    self.loops += 1
                    ok, bgr = self._capture.read()
                if not ok:
                    break
                if self._interval:
                    next_at += self._interval
                    time.sleep(max(0.0, next_at - self._clock()))
                self.slot.put(Grabbed(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self._clock()))
        finally:
            self.slot.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._capture.release()
