"""`livediff doctor` on this CPU: a real short stream per backend, compared with eager."""
from __future__ import annotations

import json

from livediff.app.cli import main


def test_doctor_reports_each_backend_with_speed_error_and_verdict(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("LIVEDIFF_CACHE_DIR", str(tmp_path))
    assert main(["doctor", "--backends", "eager,onnxruntime", "--frames", "2", "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["environment"]["torch"] and report["environment"]["cuda_available"] is False
    assert report["workload"]["preset"] == "tiny" and report["workload"]["device"] == "cpu"
    by_name = {b["backend"]: b for b in report["backends"]}
    assert set(by_name) == {"eager", "onnxruntime"}
    assert by_name["eager"]["verdict"] == "ok" and by_name["eager"]["fps"] > 0
    assert by_name["eager"]["nonfinite_values"] == 0
    onnx = by_name["onnxruntime"]
    assert onnx["verdict"] in ("ok", "slower than eager") and onnx["rel_error"] < 1e-3


def test_doctor_names_a_backend_that_cannot_run_here(capsys):
    assert main(["doctor", "--backends", "tensorrt", "--frames", "1", "--threads", "1"]) == 1
    table = capsys.readouterr().out
    assert "| tensorrt |" in table and "failed: " in table and "| backend | fps |" in table


def test_doctor_measures_the_sdxl_layout_with_a_controlnet_and_an_ip_adapter(capsys):
    assert main(["doctor", "--family", "sdxl", "--controlnets", "1", "--ip-adapter", "--backends", "eager",
                 "--frames", "1", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "tiny-sdxl 128²" in table and "1 ControlNet(s) · IP-Adapter" in table and "| eager |" in table
    assert "| ok |" in table
    assert main(["doctor", "--controlnets", "9", "--frames", "1"]) == 2


class Overflowing:
    """Wraps a UNet runner: its first output row is +inf (a float16 overflow)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, *inputs):
        def overflow(t):
            t = t.clone()
            t[0] = float("inf")
            return t

        return self.inner(*inputs).map(overflow)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_doctor_fails_a_backend_whose_stream_zeroed_non_finite_values(capsys, monkeypatch):
    """Issue 26, defect 8: zeroed NaN/inf (flat frames otherwise) are counted in the report and fail it."""
    import livediff.pipelines as pipelines

    real = pipelines.load_pipeline

    def overflowing(**settings):
        pipe = real(**settings)
        pipe.runners.unet = Overflowing(pipe.runners.unet)
        return pipe

    monkeypatch.setattr(pipelines, "load_pipeline", overflowing)
    assert main(["doctor", "--backends", "eager", "--frames", "2", "--json", "--threads", "1"]) == 1
    eager, = json.loads(capsys.readouterr().out)["backends"]
    assert eager["nonfinite_values"] > 0
    assert eager["verdict"].startswith(f"failed: {eager['nonfinite_values']} non-finite values zeroed in ")
