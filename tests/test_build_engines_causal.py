"""`livediff build-engines --mode causal-video`: the causal transformer's graph built ahead of time.

* onnxruntime: the command exports the one graph (`causal_transformer`) into the cache and prints
  where; a pipeline loaded afterwards with the same settings and `build=False` (a missing graph is an
  error, not an export) finds it and exports nothing, so the keys are the same; a second command run
  exports nothing either. The tiny export takes ~20-30 s, so it runs once for the module;
* what cannot be built is refused in one sentence (exit code 2, no traceback) before any weights load:
  compile (nothing to build ahead), a resolution range or several sessions (the causal graph is static,
  one stream), causal options in an image mode, and tensorrt without the `tensorrt` package.
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest
import torch

from livediff.app.cli import main as cli
from livediff.errors import AcceleratorError
from livediff.pipelines import load_pipeline

SIZE = 64
CAUSAL = dict(chunk_frames=1, sink_chunks=1, window_chunks=1)


def command(cache_dir, accelerator: str = "onnxruntime", *extra: str) -> list[str]:
    return ["build-engines", "--mode", "causal-video", "--model", "tiny-wan-causal", "--accelerator", accelerator,
            "--width", str(SIZE), "--height", str(SIZE), "--t-index-list", "20,40", "--chunk-frames", "1",
            "--sink-chunks", "1", "--window-chunks", "1", "--device", "cpu", "--cache-dir", str(cache_dir), *extra]


def no_export(*args, **kwargs):
    raise AssertionError("a graph built by build-engines was exported again")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The command run once: (cache folder, exit code, what it printed)."""
    cache_dir = tmp_path_factory.mktemp("causal_engines")
    out = io.StringIO()  # capsys is per test; this fixture is per module
    with contextlib.redirect_stdout(out):
        code = cli(command(cache_dir))
    return cache_dir, code, out.getvalue()


def test_build_engines_exports_the_causal_transformer_graph(built):
    cache_dir, code, printed = built
    assert code == 0
    lines = [line for line in printed.splitlines() if line.startswith("causal_transformer: ")]
    assert len(lines) == 1 and str(cache_dir) in lines[0]
    path = Path(lines[0].split(": ", 1)[1])
    assert path.suffix == ".onnx" and path.is_file()


def load_without_building(cache_dir, causal: dict):
    return load_pipeline(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                         dtype="float32", t_index_list=[20, 40], causal=causal, accelerator="onnxruntime",
                         accelerator_options=dict(cache_dir=cache_dir, build=False))


def test_a_pipeline_with_the_same_settings_builds_nothing(built, monkeypatch, capsys):
    cache_dir = built[0]
    monkeypatch.setattr("livediff.accelerators.onnx_export.export_onnx", no_export)
    assert load_without_building(cache_dir, CAUSAL).causal.function.name == "causal_transformer"
    with pytest.raises(AcceleratorError, match="building was disabled"):  # so a wrong key would be seen
        load_without_building(cache_dir, {**CAUSAL, "window_chunks": 2})
    assert cli(command(cache_dir)) == 0  # the command again: a cache hit
    assert "causal_transformer: " in capsys.readouterr().out


@pytest.mark.parametrize("accelerator, extra, message", [
    ("compile", (), "build-engines --accelerator 'compile' builds nothing; use tensorrt or onnxruntime or openvino"),
    ("onnxruntime", ("--max-width", "128"), "--min/--max-width/height do not apply to --mode causal-video: its "
     "transformer graph has the static --width x --height (the cache size follows from it)"),
    ("onnxruntime", ("--max-sessions", "2"), "--max-sessions does not apply to --mode causal-video: a causal "
     "stream runs alone, one row per call"),
])
def test_what_cannot_be_built_is_one_sentence(tmp_path, monkeypatch, capsys, accelerator, extra, message):
    from livediff.pipelines.causal import models

    monkeypatch.setattr(models, "load_causal_models", lambda *a: pytest.fail("weights loaded"))
    assert cli(command(tmp_path, accelerator, *extra)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [f"livediff: error: {message}"]


def test_causal_options_in_an_image_mode_are_refused(tmp_path, capsys):
    assert cli(["build-engines", "--model", "tiny", "--accelerator", "onnxruntime", "--chunk-frames", "2",
                "--device", "cpu", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "livediff: error: --chunk-frames is a --mode causal-video option"


def test_tensorrt_without_the_package_is_one_sentence(tmp_path, monkeypatch, capsys):
    from livediff.pipelines.causal import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setattr(models, "load_causal_models", lambda *a: pytest.fail("weights loaded"))
    args = command(tmp_path, "tensorrt", "--dtype", "float16")
    args[args.index("cpu")] = "cuda"
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["livediff: error: accelerator 'tensorrt' needs TensorRT: install "
                                        "livediff[tensorrt] on a machine with CUDA"]
