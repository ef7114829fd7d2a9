"""`livediff video` end to end with the tiny model on clips made by PyAV."""
from __future__ import annotations

import json

from livediff.app.cli import main
from media import make_clip, probe

TINY = ["--model", "tiny", "--width", "64", "--height", "64", "--prompt", "claymation", "--no-progress"]


def test_video_command_keeps_frames_fps_audio_and_writes_metrics(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", n_frames=12, size=(96, 64), fps=12)
    out = tmp_path / "out.mp4"
    assert main(["video", str(clip), "-o", str(out), "--metrics", "--mode", "img2img", *TINY]) == 0
    source, result = probe(clip), probe(out)
    assert result["frames"] == source["frames"] == 12
    assert result["fps"] == source["fps"]
    assert result["audio"] == source["audio"] == "aac"
    assert abs(result["audio_seconds"] - source["audio_seconds"]) < 0.1
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["frames_used"] == 12 and metrics["warp_error"] >= 0


def test_corrupt_input_is_named_and_the_good_one_finishes(tmp_path, capsys):
    good = make_clip(tmp_path / "good.mp4", n_frames=6, size=(64, 64), fps=6, audio=False)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    out_dir = tmp_path / "out"
    code = main(["video", str(good), str(bad), "-o", str(out_dir), "--mode", "img2img", *TINY])
    assert code != 0
    assert "bad.mp4" in capsys.readouterr().err
    assert probe(out_dir / "good.mp4")["frames"] == 6


def test_video_mode_with_bank_options(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", n_frames=8, size=(64, 64), fps=8, audio=False)
    out = tmp_path / "out.mp4"
    args = ["video", str(clip), "-o", str(out), "--bank-interval", "2", "--bank-fifo", "--bank-frames", "2", *TINY]
    assert main(args) == 0
    assert probe(out)["frames"] == 8


def test_bad_bank_option_is_named(tmp_path, capsys):
    clip = make_clip(tmp_path / "in.mp4", n_frames=4, size=(64, 64), fps=8, audio=False)
    code = main(["video", str(clip), "-o", str(tmp_path / "o.mp4"), "--bank-interval", "0", *TINY])
    assert code == 2
    assert "cache_interval" in capsys.readouterr().err


def test_rerun_asks_for_overwrite_and_ctrl_c_is_reported_once_with_resume(tmp_path, capsys, monkeypatch):
    from livediff.app.video.processor import PipelineProcessor

    clip = make_clip(tmp_path / "in.mp4", n_frames=10, size=(64, 64), fps=10, audio=False)
    out = tmp_path / "out.mp4"
    assert main(["video", str(clip), "-o", str(out), "--mode", "img2img", *TINY]) == 0
    capsys.readouterr()
    assert main(["video", str(clip), "-o", str(out), "--mode", "img2img", *TINY]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "Traceback" not in err

    run = PipelineProcessor.__call__
    calls = []

    def interrupted(self, rgb):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return run(self, rgb)

    monkeypatch.setattr(PipelineProcessor, "__call__", interrupted)
    assert main(["video", str(clip), "-o", str(out), "--mode", "img2img", "--overwrite", *TINY]) == 130
    err = capsys.readouterr().err
    assert err.count("interrupted") == 1 and "--resume" in err and ".out.mp4.livediff/partial.mp4" in err
    assert probe(out)["frames"] == 10  # the finished output of the first run is still whole


def test_an_explicit_size_of_another_aspect_says_what_it_crops_and_metrics_compare_that_region(tmp_path, capsys):
    clip = make_clip(tmp_path / "in.mp4", n_frames=8, size=(96, 64), fps=8, audio=False)
    out = tmp_path / "out.mp4"
    assert main(["video", str(clip), "-o", str(out), "--metrics", "--mode", "img2img", *TINY]) == 0
    err = capsys.readouterr().err
    assert "restyling the centred 64x64 region at (16, 0)" in err and "the output is 64x64" in err
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    assert metrics["source_size"] == [64, 64] and metrics["edited_size"] == [64, 64]


def test_a_second_run_on_the_same_output_refuses_and_sigterm_stops_like_ctrl_c(tmp_path, capsys, monkeypatch):
    """Two real processes: a running `livediff video`, then a second run on its output, which refuses
    before loading a model; then a real SIGTERM, which keeps the frames done (exit 143)."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from livediff.app.video.processor import PipelineFactory
    from livediff.app.video.workarea import partial_path_for, work_dir_for

    clip = make_clip(tmp_path / "in.mp4", n_frames=400, size=(64, 64), fps=10, audio=False)
    out = tmp_path / "out.mp4"
    args = ["video", str(clip), "-o", str(out), "--mode", "img2img", *TINY[:-1]]
    first = subprocess.Popen([sys.executable, "-c", "import sys; from livediff.app.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", *args],
                             stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        seen = b""
        assert first.stderr is not None
        while not re.search(rb"\b[1-9]\d*/400 \[", seen):  # a progress line: frames are being written
            chunk = os.read(first.stderr.fileno(), 4096)
            assert chunk, seen.decode(errors="replace")
            seen += chunk

        def loads(self):
            raise AssertionError("the second run loaded a model")

        monkeypatch.setattr(PipelineFactory, "__call__", loads)
        assert main([*args, "--overwrite", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is being written by another livediff run (pid {first.pid}); wait for it to finish" in err

        first.send_signal(signal.SIGTERM)
        rest = first.communicate(timeout=60)[1]
    finally:
        first.kill()
    assert first.returncode == 143
    assert "stopped by SIGTERM in" in rest.decode() and "--resume" in rest.decode()
    assert 0 < probe(partial_path_for(out))["frames"] < 400
    assert not (work_dir_for(out) / "lock").exists() and not out.exists()
