"""The server side of the Webcam tab's WebRTC transport: stream tokens, settings, offers, its own event loop.

How a page streams over WebRTC (the page's script is in `rtc_page.py`):

1. its Start button calls the `webrtc_start` event with every control value; `open` stores them
   for the tab (Gradio's `session_hash`, the *owner*) and returns a one-use token;
2. the page posts its SDP offer with that token to `POST /webrtc/offer` (`offer_route`); the answer
   connects a new peer connection whose frames go through a registry session of its own,
   `webrtc-<token>`, so a tab's WebRTC stream never shares buffers with its other tabs' pipelines;
3. every control change calls the `webrtc_settings` event, and `update` hands the new values to
   the owner's stream, which applies them to its next frame.

The peer connections live on one asyncio loop in a thread of their own, not on Gradio's: packets,
ICE and DTLS never wait for Gradio's request handling, and Gradio never waits for them. A stream
ends when its connection closes (its session is closed with it), when its owner's page unloads,
or when the registry closes its session for any other reason (idle, shutdown).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from livediff.app.ui import rtc_jitter
from livediff.app.ui.ice import IceServer, rtc_configuration
from livediff.app.ui.rtc_stream import Controls, RtcStream
from livediff.app.ui.sessions import SessionRegistry
from livediff.app.ui.webcam_tab import WebcamStream
from livediff.pipelines.choices import MAX_SESSIONS

SESSION_PREFIX = "webrtc-"
OFFER_PATH = "/webrtc/offer"


class OfferRefused(Exception):
    """An offer the server cannot answer; the message is one sentence for the page to show."""


class RtcHub:
    """Tokens, controls and peer connections of every WebRTC stream of one server."""

    def __init__(self, registry: SessionRegistry, webcam: WebcamStream, ice_servers: tuple[IceServer, ...] = ()):
        self.registry = registry
        self.webcam = webcam
        self.ice_servers = ice_servers  # the page's peer connections get the same (`rtc_page.head`)
        self._lock = threading.Lock()
        self._controls: dict[str, Controls] = {}      # owner → its page's control values
        self._pending: dict[str, str] = {}            # unused token → owner
        self._streams: dict[str, RtcStream] = {}      # owner → its live stream
        # one thread per stream at most (each blocks in the batcher while its frame is computed)
        self._pool = ThreadPoolExecutor(max_workers=MAX_SESSIONS, thread_name_prefix="livediff-webrtc")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="livediff-webrtc-loop", daemon=True)
        self._thread.start()
        registry.on_close(self._session_closed)
        registry.on_shutdown(self.shutdown)

    # --- called from Gradio's handler threads ------------------------------------------------
    def open(self, owner: str, controls: Controls) -> str:
        """A token for the owner's next offer; the owner's previous stream (if any) ends."""
        token = secrets.token_urlsafe(16)
        with self._lock:
            self._pending = {t: o for t, o in self._pending.items() if o != owner}
            self._pending[token] = owner
            self._controls[owner] = controls
        self.close_owner(owner, forget_controls=False)
        return token

    def update(self, owner: str, controls: Controls) -> None:
        """New control values for the owner's stream (nothing to do for a tab that never pressed Start)."""
        with self._lock:
            if owner not in self._controls:
                return
            self._controls[owner] = controls
            stream = self._streams.get(owner)
        if stream is not None:
            stream.controls = controls

    def close_owner(self, owner: str, forget_controls: bool = True) -> None:
        """End the owner's stream (its page unloaded, or it starts a new one)."""
        with self._lock:
            stream = self._streams.pop(owner, None)
            if forget_controls:
                self._controls.pop(owner, None)
                self._pending = {t: o for t, o in self._pending.items() if o != owner}
        if stream is not None:
            asyncio.run_coroutine_threadsafe(stream.close(), self._loop)

    def streams(self) -> dict[str, RtcStream]:
        """owner → live stream (a copy, for tests and status displays)."""
        with self._lock:
            return dict(self._streams)

    def shutdown(self) -> None:
        """Close every connection and stop the loop (the registry's sessions are the registry's to close)."""
        with self._lock:
            streams = list(self._streams.values())
            self._streams.clear()

        async def close_all() -> None:
            await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)

        if self._loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=10)
            except concurrent.futures.TimeoutError:
                pass  # a connection that does not close in 10 s is dropped with the loop
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- offers --------------------------------------------------------------------------------
    async def answer(self, payload: Any) -> dict[str, str]:
        """The SDP answer to a page's offer (called on the web server's loop; runs on the hub's)."""
        if not isinstance(payload, dict) or not all(isinstance(payload.get(k), str) for k in ("token", "sdp")):
            raise OfferRefused("the offer must be JSON with text fields 'token' and 'sdp'")
        if payload.get("type", "offer") != "offer":
            raise OfferRefused(f"expected an SDP offer, got type {payload.get('type')!r}")
        future = asyncio.run_coroutine_threadsafe(self._connect(payload["token"], payload["sdp"]), self._loop)
        return await asyncio.wrap_future(future)

    async def _connect(self, token: str, sdp: str) -> dict[str, str]:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        with self._lock:
            owner = self._pending.pop(token, None)
            controls = self._controls.get(owner) if owner is not None else None
        if controls is None:
            raise OfferRefused("this WebRTC stream token is unknown or already used; press Start again")
        pc = RTCPeerConnection(configuration=rtc_configuration(self.ice_servers))
        stream = RtcStream(pc, SESSION_PREFIX + token, controls, self.webcam, self._pool, self._stream_ended)
        cameras = []
        pc.on("track", lambda track: cameras.append(track) if track.kind == "video" else None)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            if not cameras:
                raise OfferRefused("the offer carries no video track; the page must send its camera")
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    rtc_jitter.install(transceiver.receiver)
            pc.addTrack(stream.output)
            await pc.setLocalDescription(await pc.createAnswer())
        except OfferRefused:
            await pc.close()
            raise
        except Exception as exc:  # aiortc's errors for unreadable or unsupported SDP
            await pc.close()
            raise OfferRefused(f"the WebRTC offer could not be answered: {exc}") from exc
        with self._lock:
            previous = self._streams.get(owner)
            self._streams[owner] = stream
        if previous is not None:
            await previous.close()
        stream.attach(cameras[0])
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    # --- endings ---------------------------------------------------------------------------------
    def _stream_ended(self, session_id: str) -> None:
        """After a connection closed (in a pool thread): close its session, forget the stream."""
        with self._lock:
            self._streams = {o: s for o, s in self._streams.items() if s.session_id != session_id}
        self.registry.close(session_id)

    def _session_closed(self, session_id: str) -> None:
        """The registry closed a session (any thread): if a stream carries it, close the connection."""
        if not session_id.startswith(SESSION_PREFIX):
            return
        with self._lock:
            streams = [s for s in self._streams.values() if s.session_id == session_id]
        for stream in streams:
            if not stream.closed and self._loop.is_running():
                asyncio.run_coroutine_threadsafe(stream.close(), self._loop)


def offer_route(hub: RtcHub) -> APIRoute:
    """`POST /webrtc/offer` for Gradio's FastAPI app: JSON {token, sdp, type} in, {sdp, type} out;
    a refused offer answers 400 with {"error": one sentence}."""
    async def offer(request: Request) -> JSONResponse:
        try:
            payload = await request.json()
        except ValueError:
            return JSONResponse({"error": "the offer is not valid JSON"}, status_code=400)
        except RecursionError:  # the JSON parser recurses once per nesting level
            return JSONResponse({"error": "the offer's JSON is nested too deeply; send {token, sdp, type}"},
                                status_code=400)
        try:
            return JSONResponse(await hub.answer(payload))
        except OfferRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return APIRoute(OFFER_PATH, offer, methods=["POST"], include_in_schema=False)
