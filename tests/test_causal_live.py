"""Live causal video (issue 16, item 5): `livediff webcam --stream-mode causal-video` and the UI's Webcam
tab in that mode. Frames come out of the pipeline a chunk at a time; the live paths show them in order,
one per captured frame, a chunk's worth of frames late, and say so."""
from __future__ import annotations

import numpy as np
import pytest

from livediff.app.cli import main

SIZE = 64
CAUSAL = ["--model", "tiny-wan-causal", "--stream-mode", "causal-video", "--width", str(SIZE), "--height", str(SIZE),
          "--device", "cpu", "--prompt", "claymation"]


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def _reference(frames, chunk_frames: int) -> list[np.ndarray]:
    """The same stream through a fresh pipeline, all at once: every frame, in order."""
    from livediff.pipelines import load_pipeline

    pipe = load_pipeline(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                         dtype="float32", t_index_list=[32, 45], seed=2, causal=dict(chunk_frames=chunk_frames))
    pipe.prepare(prompt="claymation")
    out = [picture for frame in frames for picture in pipe(frame)]
    return out + pipe.flush()


class _FakeSlot:
    """The camera's frame slot over a list; at its end: closed (the file ended), `end` raised (Ctrl-C),
    or None without closing (the camera stalls)."""

    def __init__(self, frames, end: str = "close"):
        self._frames = list(frames)
        self._end = end
        self.dropped = 0
        self.closed = False

    def take(self, timeout=None):
        from livediff.app.camera import Grabbed
        from livediff.app.live_metrics import now

        if not self._frames:
            if self._end == "ctrl-c":
                raise KeyboardInterrupt
            self.closed = self._end == "close"
            return None
        return Grabbed(self._frames.pop(0), now())


def _fake_camera(monkeypatch, frames, end: str = "close"):
    import livediff.app.camera as camera

    class FakeCamera:
        def __init__(self, source, loop=True):
            self.slot = _FakeSlot(frames, end)

        def start(self):
            return self

        def stop(self):
            pass

    monkeypatch.setattr(camera, "CameraReader", FakeCamera)


def _recorded(monkeypatch) -> list:
    from livediff.app.commands import webcam

    written = []

    class Recorder:
        def __init__(self, path, width, height):
            pass

        def write(self, picture, delivered):
            written.append(picture)

        def close(self):
            pass

    monkeypatch.setattr(webcam, "_Recorder", Recorder)
    return written


@pytest.mark.parametrize("chunk_frames, delay", [(1, 3), (2, 7)])
def test_webcam_shows_every_frame_in_order_with_the_chunk_delay(tmp_path, monkeypatch, capsys, chunk_frames, delay):
    from ui_helpers import record_pacing

    frames = _frames(11)  # k=1: chunks of 1, 4, 4 and an incomplete last one of 2 (flushed at the end)
    _fake_camera(monkeypatch, frames)
    written = _recorded(monkeypatch)
    paced = record_pacing(monkeypatch)
    assert main(["webcam", "--camera", "0", "-o", str(tmp_path / "out.mp4"), "--once", "--chunk-frames",
                 str(chunk_frames), *CAUSAL]) == 0
    expected = _reference(frames, chunk_frames)
    assert len(written) == len(frames) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(written, expected))  # every frame, in order
    # while the camera runs: nothing for the first `delay` frames, then one frame per captured frame
    assert paced == [False] * delay + [True] * (len(frames) - delay)
    err = capsys.readouterr().err
    latent = "latent frame = 4" if chunk_frames == 1 else "latent frames = 8"
    assert f"delay: {delay} frames (chunk of {chunk_frames} {latent} video frames)" in err
    assert f"{len(frames)} frames;" in err


@pytest.mark.parametrize("end", ["ctrl-c", "stall"])
def test_webcam_flushes_the_incomplete_chunk_on_ctrl_c_and_when_the_camera_stops(tmp_path, monkeypatch, capsys,
                                                                                  end):
    """6 frames, chunks of 1 + 4 + (1 held): the last frame and the 3 the pacer still holds are written too."""
    from livediff.app.commands import webcam

    monkeypatch.setattr(webcam, "CAMERA_TIMEOUT_S", 0.01)
    frames = _frames(6)
    _fake_camera(monkeypatch, frames, end)
    written = _recorded(monkeypatch)
    code = main(["webcam", "--camera", "0", "-o", str(tmp_path / "out.mp4"), *CAUSAL])
    expected = _reference(frames, 1)
    assert len(written) == len(frames) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(written, expected))
    err = capsys.readouterr().err
    if end == "ctrl-c":
        assert code == 0 and "stopped by Ctrl-C after 6 frames" in err and "finishing the last" in err
    else:  # a stalled camera is an error, said after its frames were written
        assert code == 2 and "camera 0 delivered no frame for 0 s" in err


def test_causal_options_are_refused_outside_causal_video(capsys):
    code = main(["webcam", "--camera", "0", "-o", "x.mp4", "--model", "tiny", "--stream-mode", "img2img",
                 "--chunk-frames", "2"])
    assert code == 2 and "--chunk-frames is a --stream-mode causal-video option" in capsys.readouterr().err


# --- the UI's Webcam tab in causal-video mode (a real Gradio server) -------------------------------------------

@pytest.fixture(scope="module")
def causal_server():
    from ui_helpers import causal_engine, running_server

    with running_server(causal_engine(SIZE)) as srv:
        yield srv


def test_ui_webcam_returns_frames_after_the_chunk_delay_and_says_so(causal_server, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    client = Client(causal_server.url, verbose=False)
    before = set(causal_server.registry.snapshot())
    paths = []
    for i, frame in enumerate(_frames(7)):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(frame).save(paths[-1])
    results = [client.predict(handle_file(str(path)), prompt="claymation", api_name="/live_frame") for path in paths]
    images = [image for image, _ in results]
    new = [isinstance(image, str) for image in images]  # a skipped output comes back as an empty update
    assert new == [False] * 3 + [True] * 4  # the first chunk fills: nothing new for 4k - 1 = 3 frames, then one each
    assert all(Image.open(image).size == (SIZE, SIZE) for image in images[3:])
    assert all("delay: 3 frames (chunk of 1 latent frame = 4 video frames)" in stats for _, stats in results)
    assert "waiting for frames" in results[0][1] and "latency" in results[-1][1]
    session, = (s for sid, s in causal_server.registry.snapshot().items() if sid not in before)
    assert session.meter.reading().frames == 4 and session.chunk_pacer.released == 4
    assert session.applied("webcam").prompt == "claymation"


def test_ui_refuses_what_does_not_apply_with_a_sentence(causal_server, tmp_path):
    from gradio_client import Client, handle_file
    from PIL import Image

    client = Client(causal_server.url, verbose=False)
    path = tmp_path / "f.png"
    Image.fromarray(_frames(1)[0]).save(path)
    _, stats = client.predict(handle_file(str(path)), guidance_scale=3.0, similarity_filter=True,
                              api_name="/live_frame")
    assert "setting not applied" in stats
    assert "guidance (negative prompt, guidance scale, delta, CFG mode) does not apply in causal-video mode" in stats
    assert "the similarity filter does not apply in causal-video mode" in stats
    with pytest.raises(Exception, match="the Image tab restyles single pictures with an image model"):
        client.predict("img2img", handle_file(str(path)), api_name="/image")


def test_ui_video_tab_restyles_a_file_as_the_causal_video_job_does(causal_server, tmp_path):
    """An upload through the Video tab = `process_video` with the causal pipeline at the server's size (128²
    → 64²; the output is written at 128², where x264 is reproducible): every frame, in order."""
    from gradio_client import Client, handle_file

    from livediff.app.ui.settings import LiveSettings
    from livediff.app.ui.video_tab import restyle_video
    from livediff.app.video.job import process_video
    from livediff.app.video.options import JobOptions
    from livediff.app.video.processor import PipelineFactory
    from media import make_clip, read_frames

    clip = make_clip(tmp_path / "clip.mp4", n_frames=7, size=(128, 128), audio=False)  # chunks 1 + 4 + 2 flushed
    video, _, table, summary = Client(causal_server.url, verbose=False).predict(
        handle_file(str(clip)), prompt="claymation", api_name="/video")
    engine = causal_server.registry.engine
    factory = PipelineFactory(settings={**engine.settings, "mode": "causal-video", "width": SIZE, "height": SIZE},
                              prompt={"prompt": "claymation"})
    direct = process_video(clip, tmp_path / "direct.mp4", factory, JobOptions(progress=False, quiet=True))
    got, want = read_frames(video), read_frames(direct.output_path)
    assert len(got) == len(want) == 7 and got[0].shape == (128, 128, 3)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert summary.startswith("7 frames") and "warp error (edited)" in table
    # the job's progress, as the tab reports it: every frame, up to the clip's length
    progress = []
    restyle_video(causal_server.registry, "progress-session", clip, LiveSettings.for_pipeline(
        engine.stream_template, prompt="claymation"), lambda done, total: progress.append((done, total)))
    assert progress == [(i, 7) for i in range(1, 8)]
