"""Implicit builds speak: the first ONNX Runtime use at a size prints what it exports and how long
it took; a cache hit prints nothing."""
from __future__ import annotations

import io

from livediff.app.build_progress import BuildReporter
from livediff.app.cli import main


def test_reporter_prints_start_and_finish_of_a_build_and_nothing_for_a_cache_hit():
    out, clock = io.StringIO(), iter([0.0, 12.0, 40.0, 41.0])
    report = BuildReporter(out, clock=lambda: next(clock))
    report("unet", "exporting ONNX", 0, None)
    report("unet", "ONNX graph ready", 1, 1)
    report("vae_decoder", "ONNX graph ready", 1, 1)  # cached: it never started
    lines = out.getvalue().splitlines()
    assert lines == ["livediff: unet: exporting ONNX (first use at this size and setting; this takes a while) ...",
                     "livediff: unet: ONNX graph ready after 12 s (cached for next time)"]


def test_first_onnxruntime_run_reports_its_exports_then_a_second_run_is_quiet(tmp_path, capsys, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("LIVEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    Image.new("RGB", (64, 64), (120, 30, 200)).save(tmp_path / "in.png")
    argv = ["img2img", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--model", "tiny",
            "--width", "64", "--height", "64", "--device", "cpu", "--accelerator", "onnxruntime"]
    assert main(argv) == 0
    first = capsys.readouterr().err
    for network in ("unet", "vae_encoder", "vae_decoder"):
        assert f"livediff: {network}: exporting ONNX" in first and f"{network}: ONNX graph ready after" in first
    assert main(argv) == 0
    assert "exporting" not in capsys.readouterr().err
