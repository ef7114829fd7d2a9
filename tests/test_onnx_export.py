"""Exported ONNX graphs run by ONNX Runtime (CPU) against eager PyTorch, on fresh random inputs.

Graphs are exported once per test module into a temporary cache; the pipeline tests then find
them there by key, which also checks that a second pipeline reuses a cached graph.
"""
from __future__ import annotations


import onnx
import pytest
import torch

from livediff.accelerators import AcceleratorOptions
from livediff.accelerators import onnx_export as export_module
from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.engine_cache import EngineCache
from livediff.networks import stream_networks
from livediff.pipelines.runners import build_target
from livediff.accelerators.onnx_export import GRAPH_FILE, export_onnx
from livediff.accelerators.onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeRunner
from livediff.pipelines import StreamConfig, load_pipeline, shared_models

SIZE = 64
REL_TOLERANCE = 1e-4  # fp32: max |onnx − eager| / max |eager|
IMAGE_TOLERANCE = 1e-5  # max abs difference of output pixels in [0, 1] after a whole stream (seen: ~1e-6)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


def settings(**overrides) -> dict:
    base = dict(model="tiny", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE, device="cpu",
                dtype="float32")
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def progress_events() -> list:
    return []


@pytest.fixture(scope="module")
def exported(cache_dir, progress_events):
    """(backend, networks) for the tiny model with its KL VAE, graphs exported into `cache_dir`."""
    config = StreamConfig(**settings())
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype)
    backend = OnnxRuntimeBackend(build_target(config), AcceleratorOptions(cache_dir=cache_dir),
                                 progress=lambda *event: progress_events.append(event))
    return backend, stream_networks(models)


def fresh_inputs(function, rows: int, seed: int):
    torch.manual_seed(seed)
    return function.example_inputs(rows, SIZE, SIZE, torch.float32, "cpu")


@pytest.mark.parametrize("network", ["unet", "vae_encoder", "vae_decoder"])
@pytest.mark.parametrize("rows", [1, 3])
def test_graph_matches_eager(exported, network, rows):
    backend, networks = exported
    function = networks[network]
    runner = backend.runner(function)
    inputs = fresh_inputs(function, rows, seed=100 + rows)
    with torch.no_grad():
        expected = function(*inputs)
    (actual,) = runner(*inputs).values()
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < REL_TOLERANCE


def test_exports_report_progress(exported, progress_events):
    backend, networks = exported
    backend.artifact(networks["vae_decoder"])
    decoder = [event for event in progress_events if event[0] == "vae_decoder"]
    assert decoder[0][1] == "exporting ONNX" and decoder[-1] == ("vae_decoder", "ONNX graph ready", 1, 1)


def test_graphs_have_static_resolution_dynamic_rows_and_a_recent_opset(exported):
    backend, networks = exported
    model = onnx.load(str(backend.artifact(networks["unet"])))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sample = next(i for i in model.graph.input if i.name == "sample")
    dims = sample.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # rows: symbolic
    assert [d.dim_value for d in dims[1:]] == [4, SIZE // 8, SIZE // 8]
    assert [i.name for i in model.graph.input] == list(networks["unet"].input_names)
    assert [i.name for i in model.graph.input][:4] == ["sample", "timestep", "text_key_0", "text_value_0"]


def test_taesd_graphs_match_eager(tmp_path):
    config = StreamConfig(**settings(vae="tiny-taesd"))
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype)
    backend = OnnxRuntimeBackend(build_target(config), AcceleratorOptions(cache_dir=tmp_path))
    for name in ("vae_encoder", "vae_decoder"):
        function = stream_networks(models)[name]
        inputs = fresh_inputs(function, 2, seed=7)
        with torch.no_grad():
            expected = function(*inputs)
        (actual,) = backend.runner(function)(*inputs).values()
        assert relative_error(actual, expected) < REL_TOLERANCE


def test_dynamic_resolution_graph_with_external_data_runs_every_size_in_range(tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_LIMIT", 0)  # as if the weights were over 2 GB
    config = StreamConfig(**settings(vae="tiny-taesd"))
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype)
    decoder = stream_networks(models)["vae_decoder"]
    export_onnx(decoder, tmp_path, height=SIZE, width=SIZE, resolution=ResolutionRange(64, 64, 128, 192),
                dtype=torch.float32, device="cpu", opset=18)
    data = [p for p in tmp_path.iterdir() if p.name != GRAPH_FILE]
    assert len(data) == 1 and data[0].stat().st_size > 0  # the weights went next to the graph
    runner = OnnxRuntimeRunner(decoder, tmp_path / GRAPH_FILE, torch.device("cpu"))
    for height, width in [(64, 64), (128, 192), (96, 64)]:
        inputs = decoder.example_inputs(2, height, width, torch.float32, "cpu")
        with torch.no_grad():
            expected = decoder(*inputs)
        actual = runner(*inputs)["images"]
        assert actual.shape == (2, 3, height, width)
        assert relative_error(actual, expected) < REL_TOLERANCE


def test_pipeline_reuses_the_cached_graphs(cache_dir, exported, monkeypatch):
    exported[0].runner(exported[1]["unet"])  # make sure the unet graph exists
    before = sorted(p.name for p in EngineCache(cache_dir).root.iterdir())

    def no_export(*args, **kwargs):
        raise AssertionError("a cached graph was exported again")

    monkeypatch.setattr("livediff.accelerators.onnx_export.export_onnx", no_export)
    pipe = load_pipeline(accelerator="onnxruntime", accelerator_options={"cache_dir": cache_dir}, **settings())
    assert pipe.runners.name == "onnxruntime"
    assert sorted(p.name for p in EngineCache(cache_dir).root.iterdir()) == before


def test_missing_graph_with_building_disabled_is_an_error(tmp_path):
    from livediff.errors import AcceleratorError

    with pytest.raises(AcceleratorError, match="building was disabled"):
        load_pipeline(accelerator="onnxruntime", accelerator_options={"cache_dir": tmp_path, "build": False},
                      **settings())


def test_build_engines_command_finds_the_pipeline_graphs_in_the_cache(cache_dir, exported, monkeypatch, capsys):
    from livediff.app.cli import main as cli

    for name in ("unet", "vae_encoder", "vae_decoder"):
        exported[0].artifact(exported[1][name])

    def no_export(*args, **kwargs):
        raise AssertionError("a cached graph was exported again")

    monkeypatch.setattr("livediff.accelerators.onnx_export.export_onnx", no_export)
    args = ["build-engines", "--accelerator", "onnxruntime", "--model", "tiny", "--width", str(SIZE), "--height",
            str(SIZE), "--t-index-list", "20,40", "--device", "cpu", "--cache-dir", str(cache_dir)]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: {cache_dir}" in printed for name in ("unet", "vae_encoder", "vae_decoder"))
    assert cli(args[:2] + ["eager"] + args[3:]) == 2
    assert "builds nothing" in capsys.readouterr().err


def test_onnxruntime_on_cuda_runs_on_torchs_stream(monkeypatch):
    """The CUDA provider is given torch's stream, so graph runs need no synchronise (checked without
    a GPU: the provider options livediff passes)."""
    import onnxruntime

    from livediff.accelerators.onnxruntime_backend import providers_for

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    (name, options), fallback = providers_for(torch.device("cuda:1"), stream=12345)
    assert name == "CUDAExecutionProvider" and fallback == "CPUExecutionProvider"
    assert options == {"device_id": 1, "has_user_compute_stream": "1", "user_compute_stream": "12345"}
