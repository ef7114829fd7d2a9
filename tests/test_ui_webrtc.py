"""The Webcam tab's WebRTC transport against the real server, with aiortc as the browser: camera frames
go in over a peer connection, restyled frames and the meter come back, the Gradio controls' handler
reaches the stream, and closing the connection closes its session."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from livediff.app.ui.rtc_hub import SESSION_PREFIX
from livediff.app.ui.settings import LiveSettings
from media import clip_frame
from ui_helpers import SIZE, causal_engine, record_pacing, running_server

aiortc = pytest.importorskip("aiortc")
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from av import VideoFrame  # noqa: E402

WAIT_S = 90  # generous: CI machines are slow; nothing here asserts a speed


@pytest.fixture(scope="module")
def server():
    with running_server() as srv:
        yield srv


@pytest.fixture()
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


class Camera(MediaStreamTrack):
    """A 30 fps camera of given RGB pictures (a clip of the test media, or one colour)."""

    kind = "video"

    def __init__(self, pictures: list[np.ndarray]):
        super().__init__()
        self.pictures = pictures
        self.sent = 0

    async def recv(self) -> VideoFrame:
        await asyncio.sleep(1 / 30)
        frame = VideoFrame.from_ndarray(self.pictures[self.sent % len(self.pictures)], format="rgb24")
        frame.pts, frame.time_base = self.sent * 3000, Fraction(1, 90_000)
        self.sent += 1
        return frame


class Peer:
    """The page's side of one WebRTC stream: sends `camera`, keeps what comes back."""

    def __init__(self, camera: Camera):
        self.pc = RTCPeerConnection()
        self.pc.addTrack(camera)
        self.meter = self.pc.createDataChannel("meter")
        self.messages: list[str] = []
        self.pictures: list[np.ndarray] = []
        self.meter.on("message", self.messages.append)
        self.pc.on("track", lambda track: asyncio.ensure_future(self._receive(track)))

    async def _receive(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                self.pictures.append((await track.recv()).to_ndarray(format="rgb24"))
            except MediaStreamError:
                return

    async def connect(self, url: str, token: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = {"token": token, "sdp": self.pc.localDescription.sdp, "type": "offer"}
        answer = await asyncio.to_thread(post, url + "webrtc/offer", offer)
        await self.pc.setRemoteDescription(RTCSessionDescription(**answer))


def post(url: str, payload) -> dict:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=WAIT_S) as reply:
        return json.loads(reply.read())


async def wait_for(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up after {WAIT_S} s waiting for {what}")


def controls(server, **changes) -> dict:
    """Every control value, as the page sends them with each event."""
    return LiveSettings.for_pipeline(server.registry.engine.stream_template, **changes).by_name()


def webrtc_sessions(server) -> dict:
    return {sid: s for sid, s in server.registry.snapshot().items() if sid.startswith(SESSION_PREFIX)}


def test_webrtc_stream_restyles_frames_and_follows_the_controls(server, client):
    token = client.predict(**controls(server, prompt="a red fox"), api_name="/webrtc_start")
    clip = [clip_frame(i, 160, 120) for i in range(8)]

    async def scenario():
        peer = Peer(Camera(clip))
        await peer.connect(server.url, token)
        await wait_for(lambda: len(peer.pictures) >= 5, "5 restyled frames back over WebRTC")
        await wait_for(lambda: any("fps" in m for m in peer.messages), "the meter over the data channel")
        (session,) = webrtc_sessions(server).values()
        assert session.applied("webcam").prompt == "a red fox"
        assert peer.pictures[-1].shape == (SIZE, SIZE, 3), "pictures come back at the model's size"

        await asyncio.to_thread(client.predict, **controls(server, prompt="a blue whale", seed=7),
                                api_name="/webrtc_settings")
        await wait_for(lambda: session.applied("webcam").prompt == "a blue whale", "the new prompt in the stream")
        assert session.applied("webcam").seed == 7
        await asyncio.to_thread(client.predict, **{**controls(server, prompt="a blue whale"), "seed": None},
                                api_name="/webrtc_settings")
        await wait_for(lambda: any("seed" in m and "not applied" in m for m in peer.messages),
                       "the refused seed named next to the meter")
        received = len(peer.pictures)
        await wait_for(lambda: len(peer.pictures) >= received + 3, "the stream to go on after a refused value")
        await peer.pc.close()

    asyncio.run(scenario())
    assert server.registry.engine.batcher.stats().batches > 0
    asyncio.run(wait_for(lambda: not webrtc_sessions(server), "the closed connection's session to be removed"))
    assert not server.demo.rtc_hub.streams()


def test_webrtc_pictures_keep_their_colours_and_only_the_newest_frame_is_taken(server, client):
    """Pass-through (the model's batch returns each frame as it came): the colours survive the round
    trip (no channel swap), a model slower than the camera makes the server skip frames instead of
    queueing them, and a session closed on the server's side hangs up its connection."""
    batcher = server.registry.engine.batcher
    run = batcher.run
    calls = []

    def slow_pass_through(session_id, pipe, frame):
        calls.append(round(frame[2:10].mean() / 8) % 32)  # the camera frame's number (mod 32)
        time.sleep(0.2)  # 5 frames/s against a 30 fps camera
        return frame, time.monotonic()

    batcher.run = slow_pass_through
    try:
        token = client.predict(**controls(server), api_name="/webrtc_start")
        pictures = []
        for number in range(32):  # orange, with the frame number as the brightness of a band at the top
            picture = np.zeros((120, 160, 3), np.uint8)
            picture[...] = (230, 120, 20)
            picture[:16] = number * 8
            pictures.append(picture)
        camera = Camera(pictures)

        async def scenario():
            peer = Peer(camera)
            await peer.connect(server.url, token)
            await wait_for(lambda: len(peer.pictures) >= 5, "5 pictures back")
            (session_id,) = webrtc_sessions(server)
            await asyncio.to_thread(server.registry.close, session_id)  # e.g. idle, or the server stops
            await wait_for(lambda: peer.pc.connectionState == "closed", "the server to hang up the connection")
            await peer.pc.close()
            return peer.pictures[-1]

        picture = asyncio.run(scenario())
    finally:
        batcher.run = run
    centre = picture[SIZE // 4:-SIZE // 4, SIZE // 4:-SIZE // 4].reshape(-1, 3).mean(axis=0)
    assert np.allclose(centre, (230, 120, 20), atol=20), centre
    steps = sorted((b - a) % 32 for a, b in zip(calls, calls[1:]))
    assert steps[len(steps) // 2] >= 2, f"frame numbers processed {calls}: stale frames were queued, not dropped"
    asyncio.run(wait_for(lambda: not webrtc_sessions(server), "the closed connection's session to be removed"))


def test_bad_offers_get_one_sentence(server):
    def refused(payload) -> str:
        with pytest.raises(urllib.error.HTTPError) as caught:
            post(server.url + "webrtc/offer", payload)
        assert caught.value.code == 400
        return json.loads(caught.value.read())["error"]

    assert "token is unknown" in refused({"token": "nope", "sdp": "v=0", "type": "offer"})
    assert "not valid JSON" in refused(b"{")
    assert "nested too deeply" in refused(b"[" * 100_000 + b"]" * 100_000)
    assert "'token' and 'sdp'" in refused({"sdp": 3})
    assert "expected an SDP offer" in refused({"token": "t", "sdp": "v=0", "type": "answer"})


def test_a_camera_frame_is_handed_over_when_its_last_packet_arrives():
    """Not one frame later, when the next frame's first packet arrives (aiortc's own buffer)."""
    from aiortc.rtp import RtpPacket

    from livediff.app.ui.rtc_jitter import MarkerJitterBuffer

    def packet(seq: int, timestamp: int, marker: bool, data: bytes) -> RtpPacket:
        p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=timestamp)
        p._data = data
        return p

    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert buffer.add(packet(10, 3000, False, b"a"))[1] is None
    frame = buffer.add(packet(11, 3000, True, b"b"))[1]
    assert (frame.data, frame.timestamp) == (b"ab", 3000)
    frame = buffer.add(packet(12, 6000, True, b"c"))[1]
    assert (frame.data, frame.timestamp) == (b"c", 6000)
    assert buffer.add(packet(13, 9000, False, b"d"))[1] is None
    assert buffer.add(packet(15, 9000, True, b"f"))[1] is None, "a frame with a missing packet is not complete"


def test_the_server_receiver_uses_the_marker_aware_buffer(server, client):
    from livediff.app.ui.rtc_jitter import MarkerJitterBuffer

    token = client.predict(**controls(server), api_name="/webrtc_start")

    async def scenario():
        peer = Peer(Camera([clip_frame(0, 160, 120)]))
        await peer.connect(server.url, token)
        await wait_for(lambda: len(peer.pictures) >= 1, "a picture back")
        (stream,) = server.demo.rtc_hub.streams().values()
        (receiver,) = [t.receiver for t in stream.pc.getTransceivers() if t.kind == "video"]
        buffers = [v for v in vars(receiver).values() if isinstance(v, MarkerJitterBuffer)]
        await peer.pc.close()
        return buffers

    assert asyncio.run(scenario()), "aiortc's receiver kept its own buffer: frames wait one interval longer"
    asyncio.run(wait_for(lambda: not webrtc_sessions(server), "the closed connection's session to be removed"))


def test_webrtc_in_causal_video_mode_returns_frames_after_the_chunk_delay(monkeypatch):
    """The causal stream's path is the Gradio one (`WebcamStream._chunked` and its `ChunkPacer`): the
    first 4k − 1 = 3 frames the session takes show nothing, then each one shows a frame, and the meter
    over the data channel says the delay."""
    from gradio_client import Client

    paced = record_pacing(monkeypatch)
    with running_server(causal_engine()) as server:
        token = Client(server.url, verbose=False).predict(**controls(server, prompt="claymation"),
                                                          api_name="/webrtc_start")

        async def scenario():
            peer = Peer(Camera([clip_frame(i, 64, 64) for i in range(8)]))
            await peer.connect(server.url, token)
            await wait_for(lambda: len(peer.pictures) >= 3, "3 restyled frames back over WebRTC")
            await wait_for(lambda: any("latency" in m for m in peer.messages), "a shown frame's meter")
            (session,) = webrtc_sessions(server).values()
            assert session.applied("webcam").prompt == "claymation"
            await peer.pc.close()
            return peer

        peer = asyncio.run(scenario())
    assert len(paced) >= 6 and paced[:3] == [False] * 3 and all(paced[3:]), paced
    assert peer.pictures[-1].shape == (64, 64, 3)
    assert all("delay: 3 frames (chunk of 1 latent frame = 4 video frames)" in m for m in peer.messages)
    assert any("waiting for frames" in m for m in peer.messages)


class StunResponder(asyncio.DatagramProtocol):
    """A STUN server on the loopback interface: answers binding requests, counts them."""

    def __init__(self):
        self.requests = 0
        self.transport: Any = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        from aioice import stun

        request = stun.parse_message(data)
        self.requests += 1
        response = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.RESPONSE,
                                transaction_id=request.transaction_id)
        response.attributes["XOR-MAPPED-ADDRESS"] = addr
        self.transport.sendto(bytes(response), addr)


def test_ice_servers_reach_the_server_peer_and_the_page(monkeypatch):
    """`--ice-server`: the server's peer connection asks the given STUN server (here one on loopback),
    and the page's RTCPeerConnection is made with the same servers, TURN credentials included."""
    from livediff.app.ui import rtc_page
    from livediff.app.ui.ice import parse_ice_servers
    from livediff.app.ui.rtc_hub import RtcHub
    from livediff.app.ui.rtc_stream import Controls
    from livediff.app.ui.sessions import SessionRegistry
    from livediff.app.ui.webcam_tab import WebcamStream
    from ui_helpers import tiny_engine

    monkeypatch.setenv("LIVEDIFF_TURN_USERNAME", "livediff")
    monkeypatch.setenv("LIVEDIFF_TURN_CREDENTIAL", "s3cret</script>")
    registry = SessionRegistry(tiny_engine())

    async def scenario():
        loop = asyncio.get_running_loop()
        transport, stun_server = await loop.create_datagram_endpoint(StunResponder, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        servers = parse_ice_servers([f"stun:127.0.0.1:{port}", "turn:turn.example.org:3478?transport=tcp"])
        head = rtc_page.head(servers)
        assert "new RTCPeerConnection(CONFIGURATION)" in head and "</script>" not in head[8:-9]
        assert json.dumps({"urls": f"stun:127.0.0.1:{port}"}) in head
        assert '"username": "livediff", "credential": "s3cret<\\/script>"' in head
        hub = RtcHub(registry, WebcamStream(registry, 1e9), servers[:1])  # aiortc would try the TURN relay
        try:
            token = hub.open("tab", Controls(LiveSettings.for_pipeline(registry.engine.stream_template)))
            peer = Peer(Camera([clip_frame(0, 64, 64)]))
            await peer.pc.setLocalDescription(await peer.pc.createOffer())
            answer = await hub.answer({"token": token, "sdp": peer.pc.localDescription.sdp, "type": "offer"})
            assert stun_server.requests >= 1 and "typ srflx" in answer["sdp"]
            await peer.pc.close()
        finally:
            await asyncio.to_thread(hub.shutdown)  # its connection still talks to this loop's STUN server
            transport.close()

    try:
        asyncio.run(scenario())
    finally:
        registry.shutdown()


def test_a_server_on_loopback_offers_and_binds_only_loopback(server, client):
    """Served on 127.0.0.1 (the default), the answer's candidates and the UDP ports they stand for are
    on 127.0.0.1 only; aioice alone offered every other interface of the machine."""
    token = client.predict(**controls(server), api_name="/webrtc_start")

    async def scenario():
        peer = Peer(Camera([clip_frame(0, 64, 64)]))
        await peer.connect(server.url, token)
        answer = peer.pc.remoteDescription.sdp
        await peer.pc.close()
        return answer

    answer = asyncio.run(scenario())
    addresses = {line.split()[4] for line in answer.splitlines() if line.startswith("a=candidate:")}
    assert addresses == {"127.0.0.1"}, answer
    asyncio.run(wait_for(lambda: not webrtc_sessions(server), "the closed connection's session to be removed"))
