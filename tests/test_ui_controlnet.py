"""ControlNet in the browser UI: the scale sliders are live settings like the others (named
`control_scale_<i>` for API clients, applied through the pipeline's live setter, absent without
ControlNets), and the Webcam tab's preview endpoint returns the stream's control image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from livediff.app.ui.settings import LiveSettings
from livediff.errors import ConfigError
from media import clip_frame
from ui_helpers import SIZE, running_server, tiny_engine


@pytest.fixture(scope="module")
def server():
    engine = tiny_engine(controlnet=[dict(model="random", preprocessor="canny", scale=0.8)])
    with running_server(engine) as srv:
        yield srv


@pytest.fixture()
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def only_session(server, client):
    return server.registry.snapshot()[client.session_hash]


def test_control_scales_are_named_settings_checked_like_the_others():
    plain = LiveSettings.names()
    assert "control_scales" not in plain and LiveSettings.names(2)[-2:] == ["control_scale_0", "control_scale_1"]
    values = [getattr(LiveSettings(), name) for name in plain]
    settings = LiveSettings.from_values(values + [0.5, 0], controlnets=2)
    assert settings.control_scales == (0.5, 0.0)
    assert settings.by_name()["control_scale_1"] == 0.0 and len(settings.by_name()) == len(plain) + 2
    assert LiveSettings.from_values(values).control_scales == ()
    with pytest.raises(ConfigError, match="controlnet 1 scale 2.5 must be a number in 0..2"):
        LiveSettings.from_values(values + [2.5], controlnets=1)


def test_a_server_without_controlnets_has_no_control_scale_parameter():
    from livediff.app.ui.server import build_demo
    from livediff.app.ui.sessions import SessionRegistry

    registry = SessionRegistry(tiny_engine())
    try:
        api = build_demo(registry).get_api_info()
    finally:
        registry.shutdown()
    params = {p["parameter_name"] for p in api["named_endpoints"]["/image"]["parameters"]}
    assert "strength" in params and not any(p.startswith("control_scale") for p in params)
    assert "/control_preview" not in api["named_endpoints"]


def test_the_scale_slider_reaches_the_image_pipeline_and_changes_its_output(server, client, tmp_path):
    from gradio_client import handle_file

    source = tmp_path / "in.png"
    Image.fromarray(clip_frame(3, SIZE, SIZE)).save(source)

    def restyle(scale: float) -> np.ndarray:
        out, _ = client.predict("img2img", handle_file(str(source)), prompt="oil painting", control_scale_0=scale,
                                api_name="/image")
        pipe = only_session(server, client).current("img2img")
        assert pipe.control_scales.flatten().tolist() == pytest.approx([scale]), "the slider's value is live"
        return np.asarray(Image.open(out), dtype=np.int16)

    off, strong, off_again = restyle(0.0), restyle(1.5), restyle(0.0)
    assert np.abs(off - strong).max() > 10, "a ControlNet at scale 1.5 changes the picture"
    assert np.array_equal(off, off_again), "back to 0: the ControlNet is off again, nothing rebuilt or left over"
    # txt2img runs without ControlNets: the slider's value is not a refused setting there
    _, info = client.predict("txt2img", None, prompt="a cat", control_scale_0=1.0, api_name="/image")
    assert "not applied" not in info


def test_the_webcam_stream_follows_the_scale_and_previews_its_canny_edges(server, client, tmp_path):
    from gradio_client import handle_file

    nothing = {"__type__": "update"}  # gr.skip(): the page keeps what it shows
    assert client.predict(api_name="/control_preview") == nothing, "no stream yet: no preview"
    for i in range(3):
        path = tmp_path / f"f{i}.png"
        Image.fromarray(clip_frame(i, 160, 120)).save(path)
        _, stats = client.predict(handle_file(str(path)), control_scale_0=0.25, api_name="/live_frame")
        assert "not applied" not in stats
    pipe = only_session(server, client).current("webcam")
    assert pipe.control_scales.flatten().tolist() == pytest.approx([0.25])

    preview = np.asarray(Image.open(client.predict(api_name="/control_preview")).convert("L"))
    assert preview.shape == (SIZE, SIZE)
    edges, dark = (preview > 200).mean(), (preview < 55).mean()
    assert edges > 0.001 and edges + dark > 0.95, f"a black-and-white edge map, not a picture ({edges=}, {dark=})"
    assert client.predict(api_name="/control_preview") == nothing, "each control image is sent once"
