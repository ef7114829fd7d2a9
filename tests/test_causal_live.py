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
    def __init__(self, frames):
        self._frames = list(frames)
        self.dropped = 0
        self.closed = False

    def take(self, timeout=None):
        from livediff.app.camera import Grabbed
        from livediff.app.live_metrics import now

        if not self._frames:
            self.closed = True
            return None
        return Grabbed(self._frames.pop(0), now())


def _fake_camera(monkeypatch, frames):
    import livediff.app.camera as camera

    class FakeCamera:
        def __init__(self, source, loop=True):
            self.slot = _FakeSlot(frames)

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
    from livediff.app.ui import causal_live

    frames = _frames(11)  # k=1: chunks of 1, 4, 4 and an incomplete last one of 2 (flushed at the end)
    _fake_camera(monkeypatch, frames)
    written = _recorded(monkeypatch)
    paced = []
    push = causal_live.ChunkPacer.push

    def spy(self, arrived, finished):
        shown = push(self, arrived, finished)
        paced.append(shown is not None)
        return shown

    monkeypatch.setattr(causal_live.ChunkPacer, "push", spy)
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


def test_causal_options_are_refused_outside_causal_video(capsys):
    code = main(["webcam", "--camera", "0", "-o", "x.mp4", "--model", "tiny", "--stream-mode", "img2img",
                 "--chunk-frames", "2"])
    assert code == 2 and "--chunk-frames is a --stream-mode causal-video option" in capsys.readouterr().err
