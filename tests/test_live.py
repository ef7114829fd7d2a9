"""The live path shared by the UI and `livediff webcam`: the fps/latency meter, the newest-frame
slot that drops stale frames, and the webcam command on a video file standing in for a camera."""
from __future__ import annotations

import pytest

from livediff.app.camera import Grabbed, LatestFrame
from livediff.app.live_metrics import LiveMeter
from livediff.pipelines.nonfinite import NonFiniteCounts
from media import make_clip, probe


def test_meter_latency_includes_the_stream_delay():
    meter = LiveMeter(delay_frames=1, window_s=100)
    # frames arrive at t = 0, 1, 2 and each call takes 0.5 s; with one frame of stream delay the
    # picture delivered at 2.5 shows the frame that arrived at 1.
    for t in (0.0, 1.0, 2.0):
        meter.record(arrived=t, started=t, delivered=t + 0.5)
    reading = meter.reading()
    assert reading.frames == 3
    assert reading.fps == pytest.approx(1.0)
    assert reading.compute_ms == pytest.approx(500)
    assert reading.latency_ms == pytest.approx(1500)  # median of 0.5, 1.5, 1.5 s


def test_meter_a_reused_picture_keeps_aging():
    meter = LiveMeter(delay_frames=0, window_s=100)
    meter.record(0.0, 0.0, 0.1)
    meter.record(1.0, 1.0, 1.1, advanced=False)  # similarity filter: the picture of frame 0 again
    meter.record(2.0, 2.0, 2.1, advanced=False)
    assert meter.reading().latency_ms == pytest.approx(1100)  # median of 0.1, 1.1, 2.1 s


def test_meter_window_keeps_the_last_two_frames_of_a_slow_stream():
    meter = LiveMeter(window_s=1.0)
    for t in (0.0, 5.0, 10.0):
        meter.record(t, t, t + 0.1)
    assert meter.reading().fps == pytest.approx(0.2)


class CountedReads:
    """A stand-in for a pipeline's `NonFiniteCount`: counts the (device-waiting) reads."""

    def __init__(self, values: int, frame_stages: int):
        self.counts, self.reads = NonFiniteCounts(values, frame_stages), 0

    def read(self) -> NonFiniteCounts:
        self.reads += 1
        return self.counts


def test_meter_shows_zeroed_non_finite_values_reading_the_device_at_most_once_a_second(monkeypatch):
    """Issue 26, defect 8: the meter says when the stream zeroed NaN/inf, and a display that asks for a
    reading every frame still reads the device count at most once per `NONFINITE_READ_EVERY_S`."""
    from livediff.app import live_metrics

    clock = iter(x * 0.1 for x in range(100))
    monkeypatch.setattr(live_metrics, "now", lambda: next(clock))
    meter = LiveMeter(window_s=100)
    count = CountedReads(0, 0)
    meter.watch_nonfinite(count)
    for t in range(20):  # 20 frames shown over 2 s of (fake) clock
        meter.record(t * 0.1, t * 0.1, t * 0.1 + 0.05)
        assert "non-finite" not in meter.reading().format()
    assert count.reads == 2
    meter.watch_nonfinite(counted := CountedReads(4096, 1))
    assert meter.reading().format().endswith("· 4096 non-finite values zeroed in 1 frame-stages")
    meter.reset()  # a restarted stream of the same pipeline: the count is the pipeline's and stays shown
    meter.record(9.0, 9.0, 9.1)
    assert meter.reading().nonfinite == (4096, 1) and counted.reads == 1


def test_latest_frame_slot_keeps_only_the_newest_and_counts_the_rest():
    slot = LatestFrame()
    for i in range(3):
        slot.put(Grabbed(rgb=i, at=float(i)))
    assert slot.take(timeout=1).rgb == 2
    assert slot.dropped == 2
    assert slot.take(timeout=0.01) is None and not slot.closed
    slot.put(Grabbed(rgb=3, at=3.0))
    slot.close()
    assert slot.take().rgb == 3, "a frame already there is still delivered after close"
    assert slot.take() is None and slot.closed


def test_webcam_command_records_a_file_source(tmp_path, capsys):
    from livediff.app.cli import main

    clip = make_clip(tmp_path / "camera.mp4", n_frames=30, size=(80, 60), fps=30, audio=False)
    out = tmp_path / "live.mp4"
    code = main(["webcam", "--camera", str(clip), "--output", str(out), "--model", "tiny", "--width", "64",
                 "--height", "64", "--max-frames", "3", "--device", "cpu", "--prompt", "claymation"])
    assert code == 0
    info = probe(out)
    assert 1 <= info["frames"] <= 3 and info["size"] == (64, 64)
    err = capsys.readouterr().err
    assert f"{info['frames']} frames" in err and "latency" in err and f"wrote {out}" in err


def test_webcam_command_without_a_display_says_so(monkeypatch, tmp_path, capsys):
    from livediff.app.cli import main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    assert main(["webcam", "--model", "tiny", "--camera", str(tmp_path / "none.mp4")]) == 2
    assert "cannot open a window" in capsys.readouterr().err


def test_webcam_command_names_a_camera_it_cannot_open(tmp_path, capsys):
    from livediff.app.cli import main

    assert main(["webcam", "--model", "tiny", "--camera", str(tmp_path / "none.mp4"),
                 "--output", str(tmp_path / "o.mp4")]) == 2
    assert "none.mp4" in capsys.readouterr().err
