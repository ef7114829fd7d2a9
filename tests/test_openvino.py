"""The `openvino` accelerator on this CPU: the IR cache, int8 weights with their error, and the errors
for what it cannot do (its frames equal eager's in every configuration: the parity matrix)."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("openvino")

from livediff.accelerators import AcceleratorOptions, check_accelerator  # noqa: E402
from livediff.accelerators import openvino_backend  # noqa: E402
from livediff.accelerators.engine_cache import EngineCache  # noqa: E402
from livediff.errors import AcceleratorError, ConfigError  # noqa: E402
from livediff.pipelines import StreamConfig, load_pipeline  # noqa: E402
from livediff.pipelines.runners import build_target  # noqa: E402

SIZE = 64
IMAGE_TOLERANCE = 1e-5  # max abs difference of output pixels in [0, 1] (seen: ~1.5e-7)


def settings(**overrides) -> dict:
    base = dict(model="tiny", vae="tiny-taesd", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE,
                device="cpu", dtype="float32")
    base.update(overrides)
    return base


def frame(i: int) -> torch.Tensor:
    texture = torch.rand(1, 3, SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(3))
    picture = texture[..., 3 * i:3 * i + SIZE].clone()
    picture[..., 20:36, 2 * i:2 * i + 16] = 1.0
    return picture


@pytest.fixture(scope="module")
def cache_dir(shared_graph_cache):
    """The run's shared cache: the graphs of these settings are the parity matrix's (`parity_matrix`),
    which also compares every frame of openvino with eager."""
    return shared_graph_cache


def assert_runs_without_converting(monkeypatch, cache_dir, why: str) -> None:
    """A pipeline started on `cache_dir` finds every model there: converting one fails the test."""
    def no_conversion(*args):
        raise AssertionError(why)

    monkeypatch.setattr(openvino_backend, "convert", no_conversion)
    pipe = load_pipeline(accelerator="openvino", accelerator_options={"cache_dir": cache_dir}, **settings())
    assert len(run(pipe, 2)) == 2


def run(pipe, frames: int) -> list[torch.Tensor]:
    pipe.prepare(prompt="oil painting", guidance_scale=1.4)
    return [pipe(frame(i)) for i in range(frames)]


def test_converted_models_are_cached_with_the_openvino_version_and_device(cache_dir, monkeypatch):
    load_pipeline(accelerator="openvino", accelerator_options={"cache_dir": cache_dir}, **settings())
    entries = [e for e in EngineCache(cache_dir).entries() if e.key["kind"] == "openvino"]
    assert entries and all(e.key["device"] == "CPU" and e.key["builder"].startswith("openvino ") for e in entries)
    assert_runs_without_converting(monkeypatch, cache_dir, "a cached model was converted again")


def test_int8_weights_are_opt_in_and_their_error_is_measurable(cache_dir):
    pytest.importorskip("nncf")
    eager = run(load_pipeline(**settings()), 3)
    pipe = load_pipeline(accelerator="openvino", accelerator_options={"cache_dir": cache_dir, "weights": "int8"},
                         **settings())
    outputs = run(pipe, 3)
    error = max(float((a - b).abs().max()) for a, b in zip(eager, outputs))
    assert IMAGE_TOLERANCE < error < 0.25  # compressed: not the float32 numbers, still the same picture
    keys = {e.key["precision"] for e in EngineCache(cache_dir).entries() if e.key["kind"] == "openvino"}
    assert "float32, int8 weights" in keys and "float32" in keys


@pytest.mark.parametrize("overrides, options, error, message", [
    (dict(), {"openvino_device": "NPU"}, AcceleratorError, "available: CPU"),
    (dict(), {"openvino_device": "TPU"}, ConfigError, "'TPU' is not one of CPU, GPU, NPU, AUTO"),
    (dict(), {"weights": "int4"}, ConfigError, "weights 'int4'"),
    (dict(dtype="bfloat16"), {}, ConfigError, "takes float32 graphs"),
])
def test_what_openvino_cannot_do_is_refused_before_loading(overrides, options, error, message):
    with pytest.raises(error, match=message):
        check_accelerator("openvino", build_target(StreamConfig(**settings(**overrides))), options)


def test_openvino_options_on_another_accelerator_are_refused():
    with pytest.raises(ConfigError, match="options of accelerator 'openvino'"):
        check_accelerator("onnxruntime", build_target(StreamConfig(**settings())), AcceleratorOptions(weights="int8"))


def test_build_engines_converts_ahead_of_time_and_a_pipeline_then_converts_nothing(tmp_path, monkeypatch, capsys):
    from livediff.app.cli import main as cli

    args = ["build-engines", "--accelerator", "openvino", "--model", "tiny", "--vae", "tiny-taesd", "--width",
            str(SIZE), "--height", str(SIZE), "--t-index-list", "20,40", "--device", "cpu", "--cache-dir",
            str(tmp_path), "--openvino-device", "CPU"]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: {tmp_path}" in printed and "model.xml" in printed
               for name in ("unet", "vae_encoder", "vae_decoder"))
    assert_runs_without_converting(monkeypatch, tmp_path, "a model converted by build-engines was converted again")


def test_sessions_sharing_runs_on_openvino_get_padded_rows_and_what_they_get_alone(cache_dir):
    """OpenVINO compiles per row count: shared runs are padded to one session's rows × 2^k, and each
    session still gets what it gets alone."""
    from livediff.pipelines.batching import run_together

    base = load_pipeline(accelerator="openvino", accelerator_options={"cache_dir": cache_dir}, **settings())
    specs = [dict(prompt="oil painting", seed=1), dict(prompt="claymation", seed=2),
             dict(prompt="neon", seed=3, cfg_type="full")]

    def sessions():
        made = []
        for spec in specs:
            spec = dict(spec)
            prompt = spec.pop("prompt")
            pipe = base.new_session(**spec)
            pipe.prepare(prompt=prompt, guidance_scale=1.4)
            made.append(pipe)
        return made

    together = sessions()
    batched = [[o.get() for o in run_together([p.frame_calls(frame(i), output="tensor") for p in together])]
               for i in range(3)]
    alone = [[p(frame(i), output="tensor") for p in sessions()] for i in range(3)]
    # float32 sums in another order (other row counts) drift through the stream's feedback: 1.4e-4 here
    # on eager and on OpenVINO alike; in float64 (tests/test_batching.py) batched equals alone to 1e-9
    for frame_b, frame_a in zip(batched, alone):
        for b, a in zip(frame_b, frame_a):
            assert (b - a).abs().max() < 1e-3
    unet_runner = base.runners.unet
    compiled_rows = sorted(shape[0][0] for shape in unet_runner.run._requests)
    assert set(compiled_rows) <= {1, 2, 4, 8, 16}, compiled_rows  # units 2 (self) and 4 (full) × 2^k
