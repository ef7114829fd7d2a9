"""One WebRTC peer connection of the Webcam tab: camera frames in, restyled frames and the meter out.

Frames take the same path as Gradio-streamed ones (`WebcamStream.process` → the shared
`LiveBatcher`), so WebRTC tabs batch with each other and with Gradio-streaming tabs. Everything here
runs on the hub's asyncio loop (`rtc_hub.py`) except that call, which blocks for a whole network run
and so goes to a worker thread; the loop only moves frames and packets.

Stale frames are dropped, never queued: `_pump` reads every decoded camera frame as soon as it
arrives and keeps only the newest; `_work` takes that newest one whenever the previous frame is out
of the pipeline, so at most one frame per connection is in flight and the picture sent back is of
the most recent camera frame the model could take.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from aiortc import MediaStreamTrack, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from livediff.app.ui.batcher import Superseded
from livediff.app.ui.settings import LiveSettings
from livediff.app.ui.webcam_tab import WebcamStream
from livediff.errors import LivediffError

log = logging.getLogger(__name__)

#: RTP video clock (90 kHz, what every WebRTC video codec uses).
VIDEO_CLOCK = Fraction(1, 90_000)


@dataclass
class Controls:
    """The page's control values for one stream, replaced whole by the settings handler (another thread).

    `settings=None` with a `notice`: a control holds an unusable value; the stream keeps what it has."""

    settings: LiveSettings | None
    notice: str | None = None


class PictureTrack(MediaStreamTrack):
    """The restyled pictures, sent as they are made: a new picture is sent once, none is repeated, so
    the fps the page sees is the fps the server delivers."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._next: VideoFrame | None = None
        self._ready = asyncio.Event()
        self._start: float | None = None
        self._last_pts = -1

    def show(self, picture: VideoFrame) -> None:
        self._next = picture  # an unsent older picture is replaced: the encoder never falls behind
        self._ready.set()

    async def recv(self) -> VideoFrame:
        await self._ready.wait()
        self._ready.clear()
        if self.readyState != "live":
            raise MediaStreamError
        picture, self._next = self._next, None
        at = time.monotonic()
        self._start = at if self._start is None else self._start
        self._last_pts = max(self._last_pts + 1, round((at - self._start) / VIDEO_CLOCK))
        picture.pts, picture.time_base = self._last_pts, VIDEO_CLOCK
        return picture

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake a waiting recv so it ends


class RtcStream:
    """A peer connection and the session its frames go through (`session_id` in the registry).

    `on_closed(session_id)` is called once, on the loop, after the connection closed; it closes the
    session (which runs the registry's listeners, so a session closed elsewhere also ends here)."""

    def __init__(self, pc: RTCPeerConnection, session_id: str, controls: Controls, webcam: WebcamStream,
                 pool: Executor, on_closed: Callable[[str], object]):
        self.pc = pc
        self.session_id = session_id
        self.controls = controls
        self.output = PictureTrack()
        self._webcam = webcam
        self._pool = pool
        self._on_closed = on_closed
        self._latest: VideoFrame | None = None
        self._fresh = asyncio.Event()
        self._inflight: Future | None = None
        self._meter: RTCDataChannel | None = None
        self._tasks: list[asyncio.Task] = []
        self.closed = False
        pc.on("connectionstatechange", self._state_changed)
        pc.on("datachannel", self._data_channel)

    def attach(self, camera: MediaStreamTrack) -> None:
        """Start on the page's camera track (aiortc's `track` event)."""
        self._tasks += [asyncio.ensure_future(self._pump(camera)), asyncio.ensure_future(self._work())]

    async def _pump(self, camera: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await camera.recv()
            except MediaStreamError:  # the page stopped its camera or the connection went away
                break
            self._latest = frame
            self._fresh.set()
        await self.close()

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.closed:
            await self._fresh.wait()
            self._fresh.clear()
            frame, self._latest = self._latest, None
            if frame is None or self.closed:
                continue
            self._inflight = self._pool.submit(self._process, frame)
            try:
                picture, text = await asyncio.wrap_future(self._inflight, loop=loop)
            except Superseded:  # the session closed while the frame waited for its batch
                continue
            except LivediffError as exc:
                self._say(f"⚠ {exc}")
                continue
            except Exception as exc:  # a bug: show it and end this stream rather than loop on it
                log.exception("WebRTC stream %s failed", self.session_id)
                self._say(f"⚠ the stream stopped: {exc}")
                await self.close()
                return
            if picture is not None:
                self.output.show(picture)
            self._say(text)

    def _process(self, frame: VideoFrame) -> tuple[VideoFrame | None, str]:
        """In a worker thread: decode to RGB, run the shared pipeline path, encode the picture for sending."""
        controls = self.controls
        live = self._webcam.process(self.session_id, frame.to_ndarray(format="rgb24"), controls.settings)
        text = live.meter_text()
        for notice in (controls.notice, live.notice):
            if notice:
                text += f" · ⚠ setting not applied: {notice}"
        picture = VideoFrame.from_ndarray(live.image, format="rgb24") if live.advanced else None
        return picture, text

    def _say(self, text: str) -> None:
        if self._meter is not None and self._meter.readyState == "open":
            self._meter.send(text)

    def _data_channel(self, channel: RTCDataChannel) -> None:
        self._meter = channel
        channel.on("close", lambda: asyncio.ensure_future(self.close()))

    async def _state_changed(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        """Idempotent: stop the tracks and tasks, close the connection, then the session."""
        if self.closed:
            return
        self.closed = True
        self._fresh.set()
        self.output.stop()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        await self.pc.close()
        if self._inflight is not None:  # its thread may still be inside the session: let it leave first
            await asyncio.wait([asyncio.wrap_future(self._inflight)])
        await asyncio.get_running_loop().run_in_executor(self._pool, self._on_closed, self.session_id)
