"""Per-browser-session stream state: each tab gets its own pipelines (buffers, noise, prompt, bank).

Gradio gives every page load a `session_hash`; the registry maps it to a `Session`, created on the
first event and removed when the page unloads (`demo.unload`) or, for API clients that never
unload, after `idle_timeout_s` without a call. A session closed on purpose (unload, a WebRTC stream
ending) stays closed: an event of it still in flight gets `SessionClosed` instead of bringing it back
as a session nobody would ever close. Nothing stream-related is global except the
networks (see `engine.py`), so two tabs never see each other's frames.
"""
from __future__ import annotations

import itertools
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from livediff.app.live_metrics import LiveMeter
from livediff.app.ui.batcher import Superseded
from livediff.app.ui.causal_live import nonfinite_count
from livediff.app.ui.engine import Engine
from livediff.app.ui.settings import LiveSettings, apply_settings, pipeline_overrides, prepare
from livediff.app.ui.style import needs_new_pipeline
from livediff.errors import ConfigError
from livediff.pipelines.pixel_limit import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from livediff.pipelines.nonfinite import NonFiniteCounts


REMEMBERED_CLOSED = 4096  # closed ids kept: far more than the events that can still be in flight


class SessionClosed(Superseded):
    """An event of a session that was closed on purpose: there is nobody to show its result to."""


@dataclass(frozen=True)
class _Entry:
    pipe: object
    applied: LiveSettings  # what the pipeline has now
    overrides: dict        # the config part it was built with


class Session:
    """One browser tab: a pipeline per purpose (built on first use), its settings, a meter, a scratch folder.

    Every method that touches a pipeline must be called with `engine.lock` held.
    """

    def __init__(self, engine: Engine, session_id: str, work_root: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.engine = engine
        self.max_pixels = max_pixels
        self.session_id = session_id
        self.meter = LiveMeter()
        self.last_frame_at: float | None = None
        self.last_picture = None  # the webcam stream's last output; the same object back means "skipped"
        self.chunk_pacer = None  # a causal webcam stream's queue of finished frames (`causal_live.py`)
        self._pipes: dict[str, _Entry] = {}
        self._work_root = work_root
        self._work_dir: Path | None = None
        self._runs = itertools.count(1)

    def pipeline(self, purpose: str, wanted: LiveSettings,
                 size: tuple[int, int] | None = None) -> tuple[object, str | None]:
        """The session's pipeline for `purpose`, brought to `wanted`; plus why a change was refused, if one was.

        Bank and token-merging changes, another working `size` (width, height: uploads are
        restyled at their own aspect) and removing the style image (`style.py`) build a new pipeline
        (new stream) over the same networks; everything else goes through the pipeline's live setters.
        """
        if purpose == "txt2img":
            # text-to-image always starts from pure noise, and has no input frame for a ControlNet (engine.py)
            wanted = replace(wanted, strength=1.0, control_scales=())
        overrides = pipeline_overrides(self.engine.template(purpose).config, wanted)
        if size is not None:
            overrides.update(width=size[0], height=size[1])
        current = self._pipes.get(purpose)
        refused = None
        if current is None or current.overrides != overrides or needs_new_pipeline(current.applied, wanted):
            try:
                current = self._fresh(purpose, wanted, overrides)
            except ConfigError as exc:
                if current is None:
                    raise
                refused = str(exc)
        applied, refused_change = apply_settings(current.pipe, current.applied, wanted, self.max_pixels)
        self._pipes[purpose] = replace(current, applied=applied)
        return current.pipe, refused or refused_change

    def _fresh(self, purpose: str, wanted: LiveSettings, overrides: dict) -> "_Entry":
        pipe = self.engine.new_pipeline(purpose, **overrides)
        prepare(pipe, wanted)
        if pipe.config.mode == "causal-video":  # no guidance: only the prompt was given (`settings.prepare`)
            return _Entry(pipe, LiveSettings.for_pipeline(pipe, prompt=wanted.prompt), overrides)
        start = LiveSettings.for_pipeline(pipe, prompt=wanted.prompt, negative_prompt=wanted.negative_prompt,
                                          guidance_scale=wanted.guidance_scale, delta=wanted.delta)
        return _Entry(pipe, start, overrides)

    def current(self, purpose: str):
        """The session's pipeline for `purpose` as it is, or None if it has none yet (for previews)."""
        entry = self._pipes.get(purpose)
        return entry.pipe if entry else None

    def nonfinite_counts(self) -> list[NonFiniteCounts]:
        """Each of the session's pipelines' count of zeroed non-finite values (`pipelines.nonfinite`; a
        chunked causal pipeline has none). Reads the device (waits for it): for stats only. Needs no
        `engine.lock`: a count only grows, and a pipeline replaced meanwhile is read as it was."""
        counts = (nonfinite_count(entry.pipe) for entry in list(self._pipes.values()))
        return [count.read() for count in counts if count is not None]

    def applied(self, purpose: str) -> LiveSettings | None:
        entry = self._pipes.get(purpose)
        return entry.applied if entry else None

    def reset(self, purpose: str) -> None:
        """Restart one stream (buffers, filter, meter) keeping its settings."""
        if purpose in self._pipes:
            self._pipes[purpose].pipe.reset()
        if purpose == "webcam":
            self.meter.reset()
            self.last_frame_at = self.last_picture = None
            if self.chunk_pacer is not None:
                self.chunk_pacer.reset()

    @property
    def work_dir(self) -> Path:
        """A private folder for this session's output files, removed with the session."""
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix=f"session-{self.session_id[:12]}-", dir=self._work_root))
        return self._work_dir

    def new_run_dir(self) -> Path:
        """A fresh numbered folder in `work_dir` (run-1, run-2, ...) for one job's outputs, so running the
        same upload again gives a second output instead of colliding with the first."""
        folder = self.work_dir / f"run-{next(self._runs)}"
        folder.mkdir()
        return folder

    def close(self) -> None:
        self._pipes.clear()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)


class SessionRegistry:
    """session id → Session, thread-safe; idle sessions are evicted when another one is looked up."""

    def __init__(self, engine: Engine, idle_timeout_s: float = 900.0, work_root: Path | None = None,
                 clock: Callable[[], float] = time.monotonic, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.engine = engine
        self.max_pixels = max_pixels  # of uploaded pictures (the Image tab's, style pictures): `app.pictures`
        self.idle_timeout_s = idle_timeout_s
        self.work_root = Path(work_root) if work_root else Path(tempfile.mkdtemp(prefix="livediff-ui-"))
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._closed: OrderedDict[str, None] = OrderedDict()
        self._close_listeners: list[Callable[[str], None]] = []
        self._shutdown_listeners: list[Callable[[], None]] = []

    def get(self, session_id: str) -> Session:
        """The session, created on first use. Raises `SessionClosed` for an id closed by `close`
        (session ids are never reused: Gradio's are per page load, WebRTC's per stream)."""
        if not session_id:
            raise ValueError("a session id is required (Gradio passes one with every event)")
        now = self._clock()
        with self._lock:
            stale = [sid for sid, t in self._last_used.items()
                     if sid != session_id and now - t > self.idle_timeout_s]
            closed = [self._sessions.pop(sid) for sid in stale]
            for sid in stale:
                del self._last_used[sid]
            if session_id in self._closed:
                raise SessionClosed(f"session {session_id} is closed")
            session = self._sessions.get(session_id)
            if session is None:
                session = self._sessions[session_id] = Session(self.engine, session_id, self.work_root, self.max_pixels)
            self._last_used[session_id] = now
        for old in closed:
            self._close_session(old)
        return session

    def peek(self, session_id: str) -> Session | None:
        """The session if it exists, neither creating it nor marking it as in use (for previews)."""
        with self._lock:
            return self._sessions.get(session_id)

    def touch(self, session_id: str) -> None:
        """Mark a session as in use (a long video job calls this so its session is not evicted as idle)."""
        with self._lock:
            if session_id in self._sessions:
                self._last_used[session_id] = self._clock()

    def close(self, session_id: str) -> None:
        """Close the session for good (see `get`); idle eviction closes without this, so an API client
        that comes back after a pause gets a new session."""
        with self._lock:
            self._closed[session_id] = None
            while len(self._closed) > REMEMBERED_CLOSED:
                self._closed.popitem(last=False)
            session = self._sessions.pop(session_id, None)
            self._last_used.pop(session_id, None)
        if session is not None:
            self._close_session(session)

    def on_close(self, listener: Callable[[str], None]) -> None:
        """Call `listener(session_id)` whenever a session is closed, however (unload, idle, shutdown), so
        whatever carries a session's frames (a WebRTC connection) can end with it."""
        self._close_listeners.append(listener)

    def on_shutdown(self, listener: Callable[[], None]) -> None:
        """Call `listener()` when the registry shuts down, after its sessions closed (e.g. to stop the
        WebRTC loop serving them), so whoever stops the server needs to know only the registry."""
        self._shutdown_listeners.append(listener)

    def _close_session(self, session: Session) -> None:
        self.engine.batcher.forget(session.session_id)
        with self.engine.lock:  # not while one of its frames is in the networks
            session.close()
        for listener in self._close_listeners:
            listener(session.session_id)

    def nonfinite(self) -> NonFiniteCounts:
        """The zeroed non-finite values of the open sessions' pipelines, summed (`Session.nonfinite_counts`)."""
        from livediff.pipelines.nonfinite import NonFiniteCounts

        counts = [c for session in self.snapshot().values() for c in session.nonfinite_counts()]
        return NonFiniteCounts(sum(c.values for c in counts), sum(c.frame_stages for c in counts))

    def snapshot(self) -> dict[str, Session]:
        """The live sessions by id (a copy: for status displays and tests)."""
        with self._lock:
            return dict(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._sessions

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def shutdown(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
            self._last_used.clear()
        for session in sessions:
            self._close_session(session)
        for listener in self._shutdown_listeners:
            listener()
        shutil.rmtree(self.work_root, ignore_errors=True)
