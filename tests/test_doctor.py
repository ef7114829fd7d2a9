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


def gpu_machine(monkeypatch, providers: list[str]) -> list[dict]:
    """A CUDA machine as the doctor sees it, with ONNX Runtime's `providers`; pipelines are not loaded:
    each load is recorded (with what its progress callback printed) and refused."""
    import onnxruntime
    import torch

    from livediff.app import doctor
    from livediff.errors import ConfigError

    loads: list[dict] = []

    def load_pipeline(progress, **settings):
        loads.append(settings)
        if settings["accelerator"] == "tensorrt":
            progress("unet", "Building engine", 0, 12)  # what TensorRT's progress monitor reports first
        raise ConfigError("not loaded in this test")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr(doctor, "environment", lambda: {"device_name": "a GPU"})
    monkeypatch.setattr("livediff.pipelines.load_pipeline", load_pipeline)
    return loads


def test_on_cuda_the_cpu_wheel_of_onnx_runtime_is_a_skipped_row_naming_the_gpu_wheel(monkeypatch):
    from livediff.app import doctor

    loads = gpu_machine(monkeypatch, ["AzureExecutionProvider", "CPUExecutionProvider"])
    report = doctor.run(["onnxruntime"], frames=1, progress=lambda text: None)
    (row,) = report.backends
    assert row.verdict == ("skipped: accelerator 'onnxruntime' on CUDA needs the GPU wheel of ONNX Runtime, and the "
                           "installed one runs only on AzureExecutionProvider, CPUExecutionProvider: replace it with "
                           "`pip uninstall -y onnxruntime && pip install onnxruntime-gpu`")
    assert [load["accelerator"] for load in loads] == ["eager"]  # nothing exported for a row that cannot run


def test_the_doctor_says_tensorrt_builds_engines_first_and_shows_the_build_progress(monkeypatch, capsys, tmp_path):
    from livediff.app import doctor

    monkeypatch.setenv("LIVEDIFF_CACHE_DIR", str(tmp_path))
    gpu_machine(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    said: list[str] = []
    report = doctor.run(["tensorrt"], frames=1, progress=said.append)
    assert said[-1] == (f"livediff doctor: tensorrt: first exports and builds its networks for the random-weight "
                        f"sd-turbo-random at 512² (the first run can take minutes, progress below; kept in {tmp_path} "
                        f"so later runs start at once) ...")
    assert said[0] == "livediff doctor: eager ..."
    err = capsys.readouterr().err
    assert "livediff: unet: Building engine (first use at this size and setting; this takes a while) ..." in err
    assert report.backends[0].verdict.startswith("failed: not loaded in this test")


def test_the_table_names_the_versions_not_only_the_json():
    from livediff.app.doctor import BackendReport, DoctorReport, environment

    env = environment()
    report = DoctorReport(env, dict(preset="tiny", size=128, dtype="float32", steps=2, frames=4),
                          [BackendReport("eager", "ok", fps=1.0)])
    versions = report.table().splitlines()[2]
    assert f"torch {env['torch']}" in versions and f"diffusers {env['diffusers']}" in versions
