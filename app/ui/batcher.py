"""One inference loop for every live stream of the server: frames of all sessions share network runs.

Handler threads (one per browser tab's streaming event) hand their frame to `LiveBatcher.run` and
wait; the handler thread does the frame's host part first (`StreamPipeline.frame_calls`: checking
and stacking its pixels, host preprocessors such as canny), so only device work runs under the
lock; a single loop thread takes every waiting frame, advances all of them together
(`pipelines.batching.run_together`: one VAE encode, one UNet call, one VAE decode for the lot, as
far as their networks allow) under `Engine.lock`, and hands each picture back.

When a batch starts: as soon as every *active* session (one that sent a frame within `active_s`)
has a frame waiting (or `max_batch` frames wait), or `wait_s` after the first frame of the batch
arrived, whichever is first; it takes the `max_batch` oldest waiting frames. `max_batch=1` is the
old behaviour, one frame per network call, first come first served. A
slow or silent client therefore delays the others by at most `wait_s`, and one that left stops
counting after `active_s`. A session's newer frame replaces its waiting one (the older handler
gets `Superseded`), so a backlog never builds up.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from livediff.app.live_metrics import now
from livediff.pipelines.batching import DENOISE, FramePath, RoundReport, run_together
from livediff.pipelines.choices import MAX_SESSIONS

DEFAULT_WAIT_S = 0.004
DEFAULT_ACTIVE_S = 1.0
DEFAULT_MAX_BATCH = 8


class Superseded(Exception):
    """A newer frame of the same session took this frame's place before it was processed (or the session closed)."""


@dataclass
class _Job:
    session_id: str
    path: FramePath  # the frame's path, its host part done (`StreamPipeline.frame_calls`)
    arrived: float
    result: Future = field(default_factory=Future)


@dataclass(frozen=True)
class BatcherStats:
    """What the loop did recently (over the last `window` batches)."""

    active_sessions: int
    batches: int
    frames_per_s: float       # frames delivered per second of wall time over the window
    mean_sessions: float      # frames per batch
    max_sessions: int
    mean_unet_rows: float     # rows per UNet run
    unet_runs_per_batch: float

    def format(self) -> str:
        return (f"{self.active_sessions} active session(s) · {self.frames_per_s:.1f} frames/s in all · "
                f"{self.mean_sessions:.2f} frames per batch · {self.mean_unet_rows:.1f} UNet rows per run")


class LiveBatcher:
    """The loop thread and its waiting room; `run` is safe to call from any number of threads."""

    def __init__(self, lock: threading.Lock, wait_s: float = DEFAULT_WAIT_S, active_s: float = DEFAULT_ACTIVE_S,
                 max_batch: int = DEFAULT_MAX_BATCH, window: int = 50, clock: Callable[[], float] = now):
        if not 0 <= wait_s <= 1:
            raise ValueError(f"batch wait {wait_s!r} s must be in [0, 1]")
        if not isinstance(max_batch, int) or not 1 <= max_batch <= MAX_SESSIONS:
            raise ValueError(f"max batch {max_batch!r} must be an integer in 1..{MAX_SESSIONS}")
        self.lock = lock
        self.wait_s = wait_s
        self.max_batch = max_batch
        self.active_s = active_s
        self._clock = clock
        self._waiting: dict[str, _Job] = {}
        self._last_seen: dict[str, float] = {}
        self._cond = threading.Condition()
        self._history: deque[tuple[float, int, list[RoundReport]]] = deque(maxlen=window)
        self._thread: threading.Thread | None = None
        self._stopped = False

    def run(self, session_id: str, pipe, frame) -> tuple[object, float]:
        """The picture of `frame` through `pipe` (a session's stream pipeline), computed in a shared
        batch, and when that batch started (the clock's time). The frame's host part runs here, in
        the caller's thread, without the lock."""
        job = _Job(session_id, pipe.frame_calls(frame), self._clock())
        with self._cond:
            if self._stopped:
                raise RuntimeError("the live batcher has been stopped")
            replaced = self._waiting.get(session_id)
            self._waiting[session_id] = job
            self._last_seen[session_id] = job.arrived
            if replaced is not None:
                replaced.result.set_exception(Superseded(f"session {session_id}: a newer frame replaced this one"))
            self._ensure_thread()
            self._cond.notify_all()
        return job.result.result()

    def forget(self, session_id: str) -> None:
        """A session left: it no longer counts as active (its waiting frame, if any, is dropped)."""
        with self._cond:
            self._last_seen.pop(session_id, None)
            job = self._waiting.pop(session_id, None)
            if job is not None:
                job.result.set_exception(Superseded(f"session {session_id} closed"))
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            for job in self._waiting.values():
                job.result.set_exception(RuntimeError("the live batcher has been stopped"))
            self._waiting.clear()
            self._cond.notify_all()

    def active_sessions(self) -> int:
        with self._cond:
            return self._active_count(self._clock())

    def stats(self) -> BatcherStats:
        with self._cond:
            history = list(self._history)
            active = self._active_count(self._clock())
        if not history:
            return BatcherStats(active, 0, 0.0, 0.0, 0, 0.0, 0.0)
        frames = sum(count for _, count, _ in history)
        span = history[-1][0] - history[0][0]
        unet = [r for _, _, reports in history for r in reports if r.stage == DENOISE]
        return BatcherStats(
            active_sessions=active, batches=len(history),
            frames_per_s=(frames - history[0][1]) / span if span > 0 else 0.0,
            mean_sessions=frames / len(history), max_sessions=max(count for _, count, _ in history),
            mean_unet_rows=sum(r.rows for r in unet) / len(unet) if unet else 0.0,
            unet_runs_per_batch=len(unet) / len(history))

    # --- the loop ---------------------------------------------------------------------------
    def _active_count(self, at: float) -> int:
        return sum(1 for seen in self._last_seen.values() if at - seen <= self.active_s)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="livediff-live-batcher", daemon=True)
            self._thread.start()

    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._waiting and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            first = min(job.arrived for job in self._waiting.values())
            while not self._stopped:
                at = self._clock()
                remaining = first + self.wait_s - at
                if remaining <= 0 or len(self._waiting) >= min(self._active_count(at), self.max_batch):
                    break
                self._cond.wait(remaining)
            jobs = sorted(self._waiting.values(), key=lambda job: job.arrived)[:self.max_batch]
            for job in jobs:
                del self._waiting[job.session_id]
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take_batch()
            if jobs is None:
                return
            reports: list[RoundReport] = []
            started = self._clock()
            try:
                with self.lock:
                    outcomes = run_together([job.path for job in jobs], on_run=reports.append)
            except BaseException as exc:  # the loop must outlive anything one batch does
                for job in jobs:
                    job.result.set_exception(exc)
                continue
            with self._cond:
                self._history.append((self._clock(), len(jobs), reports))
            for job, outcome in zip(jobs, outcomes):
                if outcome.error is not None:
                    job.result.set_exception(outcome.error)
                else:
                    job.result.set_result((outcome.value, started))
