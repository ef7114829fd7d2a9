"""IP-Adapter in the browser UI: a style picture and a style scale are live settings like the others
(named `style_image` / `style_scale` for API clients, absent without an IP-Adapter). Against a real
server with a random-weight adapter: the picture restyles webcam frames (Gradio streaming and
WebRTC), Image and Video requests; it is encoded once per change, not per frame; the scale acts on
the same pipeline; removing the picture gives the plain model's output; `livediff ui --style-image`
is the initial style of every new session."""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest
from PIL import Image

from livediff.app.ui.settings import LiveSettings
from livediff.app.ui.style import StyleImage
from livediff.errors import ConfigError
from livediff.pipelines.ip_adapter import IPAdapter
from media import clip_frame, make_clip
from ui_helpers import SIZE, running_server, tiny_engine

SCALE = 0.6


@pytest.fixture(scope="module")
def server():
    with running_server(tiny_engine(ip_adapter=dict(model="random", image_encoder="random", scale=SCALE))) as srv:
        yield srv


def new_client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.fixture()
def encodings(monkeypatch) -> list[int]:
    """One entry per style picture run through the image encoder and projection (any session)."""
    calls: list[int] = []
    embeddings = IPAdapter.embeddings

    def counted(self, pixels):
        calls.append(1)
        return embeddings(self, pixels)

    monkeypatch.setattr(IPAdapter, "embeddings", counted)
    return calls


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    Image.fromarray(clip_frame(7, 96, 80)).save(folder / "style.png")
    Image.fromarray(clip_frame(11, 96, 80)[::-1].copy()).save(folder / "other-style.png")
    for i in range(4):
        Image.fromarray(clip_frame(i, 160, 120)).save(folder / f"frame{i}.png")
    return folder


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_style_settings_are_named_checked_and_compared_by_their_hash(media):
    assert LiveSettings.names(1, ip_adapter=True)[-3:] == ["control_scale_0", "style_image", "style_scale"]
    assert not {"style_image", "style_scale"} & set(LiveSettings.names())
    plain = [getattr(LiveSettings(), name) for name in LiveSettings.names()]
    styled = LiveSettings.from_values(plain + [str(media / "style.png"), 1.5], ip_adapter=True)
    again = LiveSettings.from_values(plain + [str(media / "style.png"), 1.5], ip_adapter=True)
    assert styled.style_image == again.style_image and styled == again, "the same bytes: the same style"
    assert styled.style_image != StyleImage.of(str(media / "other-style.png"))
    assert styled.style_scale == 1.5 and styled.by_name()["style_scale"] == 1.5
    assert "style_image" not in LiveSettings().by_name(), "no IP-Adapter: no style values for API clients"
    assert styled.style_image.picture().shape == (80, 96, 3)
    os.utime(media / "style.png", (1, 1))
    StyleImage.of(str(media / "style.png"))
    assert time.time() - (media / "style.png").stat().st_mtime < 60, "in use: not old for Gradio's cache clean-up"
    with pytest.raises(ConfigError, match="style scale 2.5 must be a number in 0..2"):
        LiveSettings.from_values(plain + [None, 2.5], ip_adapter=True)
    with pytest.raises(ConfigError, match="needs an IP-Adapter"):
        LiveSettings(style_image=str(media / "style.png"))


def test_a_server_without_an_ip_adapter_has_no_style_controls():
    from livediff.app.ui.server import build_demo
    from livediff.app.ui.sessions import SessionRegistry

    registry = SessionRegistry(tiny_engine())
    try:
        demo = build_demo(registry)
        api = demo.get_api_info()
    finally:
        registry.shutdown()
    for endpoint in ("/image", "/live_frame", "/video", "/webrtc_settings"):
        params = {p["parameter_name"] for p in api["named_endpoints"][endpoint]["parameters"]}
        assert "strength" in params and not {"style_image", "style_scale"} & params, endpoint
    elem_ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert "ctl-strength" in elem_ids and not {"ctl-style_image", "ctl-style_scale"} & elem_ids


def test_the_server_shows_the_style_controls_with_the_adapters_scale(server):
    api = new_client(server).view_api(return_format="dict", print_info=False)
    params = {p["parameter_name"]: p for p in api["named_endpoints"]["/live_frame"]["parameters"]}
    assert params["style_image"]["component"] == "Image" and params["style_image"]["parameter_default"] is None
    assert params["style_scale"]["parameter_default"] == SCALE


def test_a_style_image_restyles_the_webcam_stream_and_is_encoded_once(server, media, encodings):
    from gradio_client import handle_file

    def stream(style: str | None, scale: float = SCALE) -> list[np.ndarray]:
        client, pictures = new_client(server), []
        for i in range(4):
            out, stats = client.predict(handle_file(str(media / f"frame{i}.png")), prompt="oil painting",
                                        style_image=handle_file(str(media / style)) if style else None,
                                        style_scale=scale, api_name="/live_frame")
            assert "not applied" not in stats, stats
            pictures.append(pixels(out))
        return pictures

    plain = stream(None)
    assert encodings == [], "no style picture: nothing encoded"
    styled = stream("style.png")
    assert len(encodings) == 1, "one style picture for four frames: encoded once, not per frame"
    assert min(np.abs(a - b).mean() for a, b in zip(plain, styled)) > 2, "the style picture changes every frame"
    assert all(np.array_equal(a, b) for a, b in zip(plain, stream("style.png", scale=0.0))), "scale 0 is off"


def test_the_scale_acts_on_the_same_pipeline_and_removing_the_picture_is_the_plain_model(server, media,
                                                                                         encodings):
    from gradio_client import handle_file

    client = new_client(server)

    def session():
        return server.registry.snapshot()[client.session_hash]

    def restyle(style: str | None, scale: float = SCALE):
        out, info = client.predict("img2img", handle_file(str(media / "frame0.png")), prompt="oil painting",
                                   style_image=handle_file(str(media / style)) if style else None,
                                   style_scale=scale, api_name="/image")
        return pixels(out), session().current("img2img")

    plain, first = restyle(None)
    styled, pipe = restyle("style.png")
    stronger, same = restyle("style.png", scale=1.5)
    assert same is pipe is first, "a style picture and its scale are live: no new pipeline"
    assert same.ip_scale == 1.5 and len(encodings) == 1, "a scale change re-encodes nothing"
    assert np.abs(plain - styled).mean() > 2 and np.abs(styled - stronger).mean() > 1
    assert np.array_equal(restyle("style.png")[0], styled), "back to the first scale: the first picture"
    assert len(encodings) == 1
    unstyled, fresh = restyle(None)
    assert fresh is not pipe and np.array_equal(unstyled, plain), "no picture again: exactly the plain model"
    assert session().applied("img2img").style_image is None
    other, _ = restyle("other-style.png")
    assert len(encodings) == 2 and np.abs(other - styled).mean() > 1, "another picture is encoded, once"


def test_the_webrtc_stream_takes_the_style_picture_and_its_changes(server, media, encodings):
    from gradio_client import handle_file

    from livediff.app.ui.rtc_hub import SESSION_PREFIX
    from test_ui_webrtc import Camera, Peer, wait_for

    client = new_client(server)
    style = handle_file(str(media / "style.png"))
    token = client.predict(prompt="oil painting", style_image=style, api_name="/webrtc_start")

    async def scenario():
        peer = Peer(Camera([clip_frame(i, 160, 120) for i in range(4)]))
        await peer.connect(server.url, token)
        await wait_for(lambda: len(peer.pictures) >= 4, "4 restyled frames back over WebRTC")
        (session,) = [s for sid, s in server.registry.snapshot().items() if sid.startswith(SESSION_PREFIX)]
        assert session.applied("webcam").style_image == StyleImage.of(str(media / "style.png"))
        assert len(encodings) == 1, "encoded once for the whole stream"
        pipe = session.current("webcam")

        await asyncio.to_thread(client.predict, prompt="oil painting", style_image=style, style_scale=1.5,
                                api_name="/webrtc_settings")
        await wait_for(lambda: session.applied("webcam").style_scale == 1.5, "the new scale in the stream")
        assert session.current("webcam") is pipe and pipe.ip_scale == 1.5 and len(encodings) == 1

        await asyncio.to_thread(client.predict, prompt="oil painting", style_image=None, api_name="/webrtc_settings")
        await wait_for(lambda: session.applied("webcam").style_image is None, "the style removed")
        assert session.current("webcam") is not pipe, "removed: a new, never styled pipeline"
        await peer.pc.close()

    asyncio.run(scenario())


def test_the_video_tab_encodes_the_style_once_per_file(server, media, encodings, tmp_path):
    from gradio_client import handle_file

    client = new_client(server)
    clip = make_clip(tmp_path / "clip.mp4", n_frames=6, size=(64, 48), fps=15, audio=False)
    _, _, _, summary = client.predict(handle_file(str(clip)), prompt="claymation",
                                      style_image=handle_file(str(media / "style.png")), api_name="/video")
    assert summary.startswith("6 frames") and len(encodings) == 1
    applied = server.registry.snapshot()[client.session_hash].applied("video")
    assert applied.style_image == StyleImage.of(str(media / "style.png")) and applied.style_scale == SCALE


def test_the_ui_commands_style_image_is_every_new_sessions_initial_style(server, media):
    from gradio_client import handle_file

    from livediff.app.cli import build_parser
    from livediff.app.commands.options import style_image
    from livediff.app.commands.ui import initial_settings

    args = build_parser().parse_args(["ui", "--model", "tiny", "--ip-adapter", "random", "--image-encoder", "random",
                                      "--style-image", str(media / "style.png"), "--prompt", "oil painting"])
    defaults = initial_settings(args, server.registry.engine, style_image(args))
    assert defaults.style_image == StyleImage.of(pixels(media / "style.png").astype(np.uint8))
    assert defaults.style_scale == SCALE and defaults.prompt == "oil painting"

    frame = handle_file(str(media / "frame0.png"))
    explicit, _ = new_client(server).predict("img2img", frame, prompt="oil painting",
                                             style_image=handle_file(str(media / "style.png")), api_name="/image")
    with running_server(server.registry.engine, defaults=defaults) as styled_server:
        client = new_client(styled_server)
        initial, _ = client.predict("img2img", frame, api_name="/image")  # every control at its initial value
        applied = styled_server.registry.snapshot()[client.session_hash].applied("img2img")
    assert applied is not None and applied.style_image is not None, "a new session starts with the command line's style"
    assert np.array_equal(pixels(initial), pixels(explicit)), "the same picture as uploading it"
