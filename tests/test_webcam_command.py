"""`livediff webcam` with a video file as the camera: it loops like a live source, and Ctrl-C keeps
and reports what was recorded."""
from __future__ import annotations

from livediff.app.cli import main
from media import make_clip, probe

TINY = ["--model", "tiny", "--width", "64", "--height", "64", "--device", "cpu", "--prompt", "claymation"]


def test_a_file_camera_loops_until_the_requested_frame_count(tmp_path, capsys):
    clip = make_clip(tmp_path / "camera.mp4", n_frames=6, size=(80, 60), fps=30, audio=False)
    out = tmp_path / "live.mp4"
    assert main(["webcam", "--camera", str(clip), "-o", str(out), "--max-frames", "14", *TINY]) == 0
    assert probe(out)["frames"] == 14  # more than the clip holds: it started again at its end
    assert f"wrote {out}" in capsys.readouterr().err


def test_once_plays_the_file_a_single_time(tmp_path):
    clip = make_clip(tmp_path / "camera.mp4", n_frames=6, size=(80, 60), fps=30, audio=False)
    out = tmp_path / "live.mp4"
    assert main(["webcam", "--camera", str(clip), "-o", str(out), "--max-frames", "14", "--once", *TINY]) == 0
    assert 1 <= probe(out)["frames"] <= 6


def test_ctrl_c_keeps_the_recording_and_prints_the_summary(tmp_path, capsys, monkeypatch):
    from livediff.app.commands import webcam

    build = webcam._build_pipeline

    class InterruptedAfterFourFrames:
        def __init__(self, pipe):
            self.pipe, self.calls = pipe, 0

        def __getattr__(self, name):
            return getattr(self.pipe, name)

        def __call__(self, frame):
            if self.calls == 4:
                raise KeyboardInterrupt
            self.calls += 1
            return self.pipe(frame)

    monkeypatch.setattr(webcam, "_build_pipeline", lambda args: InterruptedAfterFourFrames(build(args)))
    clip = make_clip(tmp_path / "camera.mp4", n_frames=30, size=(80, 60), fps=30, audio=False)
    out = tmp_path / "live.mp4"
    assert main(["webcam", "--camera", str(clip), "-o", str(out), *TINY]) == 0
    err = capsys.readouterr().err
    assert probe(out)["frames"] == 4
    assert "stopped by Ctrl-C after 4 frames" in err and f"wrote {out}" in err
