"""Live browser-camera frames through a session's stream pipeline, with an fps / latency meter.

Stale frames are dropped, never queued, at two places:

* in Gradio: a streaming event holds *one* pending input per session. The page sends a camera
  frame every `stream_every` seconds; a frame that arrives while the previous one is still in the
  pipeline replaces the pending one (`event.data` is overwritten, not appended), so when the
  handler returns it is called with the newest frame and every older one is gone;
* here: a frame that arrives more than `restart_after_s` after the session's previous picture was
  delivered (the camera was stopped and started again) restarts the stream, so the stream batch
  does not deliver pictures of the scene from before the pause. The gap is the page's round trip
  (send the picture, wait `stream_every`, upload the next frame): time spent waiting for the
  shared model is not part of it, so other tabs' load never triggers a restart.

The WebRTC transport (`rtc_stream.py`) calls `process` the same way, from its own worker threads,
taking the newest decoded camera frame whenever the previous one is out of the pipeline.

Frames of all live tabs are computed together, in shared network runs (`batcher.py`). While a
frame waits for its batch it ages; that wait is part of the latency the meter reports, not of the
compute time.

A causal video stream (stream mode causal-video, `causal_live.py`) is not batched: its chunks run the
causal transformer over the session's own K/V cache, not the UNet calls the batcher shares, so each
session's frame goes through its pipeline alone, under `Engine.lock`. The pipeline returns frames a
chunk at a time; the session's `ChunkPacer` hands back one per camera frame, in order, 4k − 1 frames
late, and the reading says so (`LiveFrame.delay`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livediff.app.live_metrics import MeterReading, now
from livediff.app.ui.causal_live import ChunkPacer, chunk_delay, delay_text, is_chunked, nonfinite_count
from livediff.app.ui.frames import fit_frame
from livediff.app.ui.sessions import SessionRegistry
from livediff.app.ui.settings import LiveSettings


@dataclass(frozen=True)
class LiveFrame:
    image: np.ndarray
    reading: MeterReading
    advanced: bool  # False: the pipeline handed back its previous picture (similarity filter)
    notice: str | None = None  # a refused setting, shown next to the meter
    delay: str | None = None  # a chunked stream's delay, said next to the meter (`causal_live.delay_text`)

    def meter_text(self) -> str:
        text = self.reading.format()
        return f"{text} · {self.delay}" if self.delay else text


def stream_delay(pipe) -> int:
    """How many calls ago the frame in a delivered picture entered (stream batch: stages − 1; a chunked
    causal pipeline paced by `causal_live.ChunkPacer`: a chunk of 4k video frames, 4k − 1)."""
    if is_chunked(pipe):
        return chunk_delay(pipe)
    return (len(pipe.settings.t_index_list) - 1) * pipe.config.frame_buffer_size


class WebcamStream:
    """Processes one session's camera frames; safe to call from many handler threads at once."""

    def __init__(self, registry: SessionRegistry, restart_after_s: float = 2.0):
        self.registry = registry
        self.restart_after_s = restart_after_s

    def process(self, session_id: str, frame: np.ndarray, settings: LiveSettings | None) -> LiveFrame:
        """One camera frame through the session's stream, in a batch with the other live sessions'
        frames (`batcher.py`). `settings=None` keeps what the stream has (a control holds an
        unusable value: the stream goes on rather than stopping for it). Raises `Superseded` when a
        newer frame of the session took this one's place or the session has been closed."""
        arrived = now()
        session = self.registry.get(session_id)
        engine = self.registry.engine
        with engine.lock:
            if session.last_frame_at is not None and arrived - session.last_frame_at > self.restart_after_s:
                session.reset("webcam")
            if settings is None:
                settings = session.applied("webcam") or LiveSettings.for_pipeline(engine.stream_template)
            seed = getattr(session.applied("webcam"), "seed", None)
            pipe, refused = session.pipeline("webcam", settings)
            if is_chunked(pipe):
                return self._chunked(session, pipe, frame, settings, arrived, refused, seed)
            session.meter.set_delay(stream_delay(pipe))
            session.meter.watch_nonfinite(nonfinite_count(pipe))
            previous = session.last_picture
        picture, started = engine.batcher.run(session_id, pipe, fit_frame(frame, engine.width, engine.height))
        delivered = now()
        session.last_picture = picture
        session.last_frame_at = delivered
        advanced = picture is not previous
        session.meter.record(arrived, started, delivered, advanced=advanced)
        return LiveFrame(picture, session.meter.reading(), advanced, refused)

    def _chunked(self, session, pipe, frame, settings, arrived, refused, seed) -> LiveFrame:
        """A causal video frame, run alone (not batched; see the module docstring), with `engine.lock` held."""
        engine = self.registry.engine
        pacer = session.chunk_pacer
        if pacer is None or pacer.delay != chunk_delay(pipe):
            pacer = session.chunk_pacer = ChunkPacer(chunk_delay(pipe))
        if seed is not None and session.applied("webcam").seed != seed:
            pacer.reset()  # a new seed restarted the stream: the frames it held are gone
            session.meter.reset()
        session.meter.set_delay(0)  # the pacer tells the meter each shown frame's own arrival
        session.meter.watch_nonfinite(nonfinite_count(pipe))
        started = now()
        shown = pacer.push(arrived, pipe(fit_frame(frame, engine.width, engine.height)))
        delivered = now()
        session.last_frame_at = delivered
        if shown is not None:
            session.last_picture, source_arrived = shown
            session.meter.record(source_arrived, started, delivered)
        return LiveFrame(session.last_picture, session.meter.reading(), shown is not None, refused, delay_text(pipe))

    def reset(self, session_id: str) -> None:
        session = self.registry.get(session_id)
        with self.registry.engine.lock:
            session.reset("webcam")
