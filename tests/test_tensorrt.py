"""TensorRT backend. Engine building and running need CUDA + TensorRT (marked `gpu`, skipped otherwise);
the optimisation profile logic is checked everywhere."""
from __future__ import annotations

import enum
import importlib.util
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.base import RowRange
from livediff.network_outputs import NetworkOutputs
from livediff.networks import stream_networks
from livediff.pipelines.stream import stream_rows
from livediff.accelerators.tensorrt_backend import profile_shapes
from livediff.pipelines import StreamConfig, load_pipeline, shared_models

SIZE = 64
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
needs_tensorrt = pytest.mark.skipif(not (HAS_TENSORRT and torch.cuda.is_available()), reason="needs CUDA + TensorRT")


def tiny_networks(model: str = "tiny"):
    config = StreamConfig(model=model, width=SIZE, height=SIZE, device="cpu", dtype="float32")
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype)
    return stream_networks(models)


def test_unet_profile_spans_warm_up_to_steady_rows_and_the_resolution_range():
    unet = tiny_networks()["unet"]
    rows = stream_rows(steps=3, frames=2, cfg_type="initialize")
    profile = profile_shapes(unet, rows, ResolutionRange(64, 64, 128, 256), 96, 128, torch.float16)
    assert profile["sample"] == ((2, 4, 8, 8), (8, 4, 12, 16), (8, 4, 16, 32))
    assert profile["timestep"] == ((2,), (8,), (8,))
    assert "encoder_hidden_states" not in profile  # only ControlNets read the embeddings
    width = unet.text.widths[0]
    assert profile["text_key_0"] == ((2, 77, width), (8, 77, width), (8, 77, width))


def test_sdxl_unet_profile_covers_the_added_conditioning_and_its_key_names_the_family():
    unet = tiny_networks("tiny-sdxl")["unet"]
    profile = profile_shapes(unet, stream_rows(steps=2, frames=1, cfg_type="full"), ResolutionRange.static(SIZE, SIZE),
                             SIZE, SIZE, torch.float16)
    assert profile["text_embeds"] == ((1, 32), (4, 32), (4, 32))
    assert profile["time_ids"] == ((1, 6), (4, 6), (4, 6))
    assert unet.variant() == (("text_kv", 77), "sdxl") and tiny_networks()["unet"].variant() == (("text_kv", 77),)


def test_vae_profile_has_one_row_per_frame():
    decoder = tiny_networks()["vae_decoder"]
    profile = profile_shapes(decoder, RowRange(2, 2, 2), ResolutionRange.static(SIZE, SIZE), SIZE, SIZE,
                             torch.float16)
    assert profile["latents"] == ((2, 4, 8, 8),) * 3


def gpu_settings(cache_dir, **overrides):
    settings = dict(model="tiny", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE, device="cuda",
                    dtype="float16", accelerator="tensorrt")
    settings.update(overrides)
    return dict(accelerator_options={"cache_dir": cache_dir}, **settings)


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_stream_matches_eager_and_reuses_its_engines(tmp_path):
    frames = [torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    outputs = {}
    for accelerator in ("eager", "tensorrt"):
        pipe = load_pipeline(**gpu_settings(tmp_path, accelerator=accelerator))
        pipe.prepare(prompt="oil painting", guidance_scale=1.5)
        outputs[accelerator] = [pipe(frame.cuda().half()).float() for frame in frames]
    for eager, trt in zip(outputs["eager"], outputs["tensorrt"]):
        assert (trt - eager).abs().max() < 2e-2  # fp16 engine vs fp16 PyTorch
    engines = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tensorrt-"))
    assert len(engines) == 3
    load_pipeline(**gpu_settings(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("tensorrt-")) == engines


@pytest.mark.gpu
@needs_tensorrt
def test_rows_outside_the_profile_are_an_error(tmp_path):
    from livediff.errors import AcceleratorError

    pipe = load_pipeline(**gpu_settings(tmp_path))
    pipe.prepare(prompt="oil painting", guidance_scale=1.5)
    pipe(torch.rand(1, 3, SIZE, SIZE, device="cuda", dtype=torch.float16))
    pipe.set_guidance(cfg_type="full")  # doubles the rows beyond the engine profile
    with pytest.raises(AcceleratorError, match="outside the engine profile"):
        pipe(torch.rand(1, 3, SIZE, SIZE, device="cuda", dtype=torch.float16))


@pytest.mark.gpu
@needs_tensorrt
def test_a_corrupted_engine_is_rebuilt_not_loaded(tmp_path):
    load_pipeline(**gpu_settings(tmp_path))
    engine = next(tmp_path.glob("tensorrt-unet-*/model.plan"))
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    pipe = load_pipeline(**gpu_settings(tmp_path))
    pipe.prepare(prompt="oil painting")
    assert pipe(torch.rand(1, 3, SIZE, SIZE, device="cuda", dtype=torch.float16)).isfinite().all()
    assert next(tmp_path.glob("tensorrt-unet-*/model.plan")).read_bytes() != bytes(data)


def test_engines_for_several_sessions_have_a_wider_profile_and_their_own_cache_key():
    """Built for the UI's batches (`max_sessions`): the most rows grow, the steady rows stay; the cache
    key differs, so an engine for one session is never used for four."""
    from livediff.accelerators.tensorrt_backend import engine_key
    from livediff.pipelines.runners import build_target

    unet = tiny_networks()["unet"]
    keys, profiles = [], []
    for sessions in (1, 4):
        target = build_target(StreamConfig(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32",
                                           t_index_list=(20, 40), max_sessions=sessions))
        rows = target.rows_for(unet)
        profiles.append(profile_shapes(unet, rows, ResolutionRange.static(SIZE, SIZE), SIZE, SIZE, torch.float16))
        keys.append(engine_key(unet, target, rows, ResolutionRange.static(SIZE, SIZE), "float16", "10", "sm_89"))
    assert [p["sample"][2][0] for p in profiles] == [2, 8] and [p["sample"][1][0] for p in profiles] == [2, 2]
    assert keys[0].digest() != keys[1].digest()


# --- the runner and the backend against stand-ins of TensorRT's objects (no GPU, no TensorRT) ----------

class FakeTensorRT(SimpleNamespace):
    """The part of the `tensorrt` module `TensorRTRunner` uses."""

    def __init__(self, engines: dict[bytes, "FakeEngine"]):
        class ILogger:
            Severity = enum.Enum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE")

            def __init__(self):
                pass

        super().__init__(
            DataType=enum.Enum("DataType", "FLOAT HALF BF16 INT8 INT32 INT64 BOOL"),
            TensorIOMode=enum.Enum("TensorIOMode", "NONE INPUT OUTPUT"),
            ExecutionContextAllocationStrategy=enum.Enum("ExecutionContextAllocationStrategy",
                                                          "STATIC ON_PROFILE_CHANGE USER_MANAGED"),
            ILogger=ILogger, Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=engines.get))


class FakeContext:
    def __init__(self, engine: "FakeEngine", strategy):
        self.engine, self.strategy = engine, strategy
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self.memory: tuple[int, int] | None = None

    def set_device_memory(self, address: int, size: int) -> None:
        self.memory = (address, size)

    def set_input_shape(self, name: str, shape: tuple) -> None:
        self.shapes[name] = shape

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def get_tensor_shape(self, name: str) -> tuple:
        return self.shapes["x"]  # every output is shaped like the input

    def execute_async_v3(self, stream: int) -> bool:
        assert self.memory is not None and self.memory[1] >= self.engine.device_memory_size_v2
        return True


class FakeEngine:
    """An engine of input `x` and outputs `y`, `mask` with the given TensorRT types (by name)."""

    def __init__(self, trt_types: dict[str, str], memory: int):
        self.types, self.device_memory_size_v2 = trt_types, memory
        self.names = ["x", "y", "mask"]
        self.contexts: list[FakeContext] = []
        self.trt: Any = None  # the fake module, set by the fixture

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str):
        return self.trt.TensorIOMode.INPUT if name == "x" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str):
        return self.trt.DataType[self.types[name]]

    def get_tensor_profile_shape(self, name: str, profile: int):
        return (1, 2), (4, 2), (8, 2)

    def create_execution_context(self, strategy=None):
        self.contexts.append(FakeContext(self, strategy))
        return self.contexts[-1]


FUNCTION: Any = SimpleNamespace(name="net", input_names=("x",), output_names=("y", "mask"), adapt_inputs=lambda *t: t)
TYPES = {"x": "BF16", "y": "HALF", "mask": "BOOL"}


@pytest.fixture
def fake_tensorrt(monkeypatch, tmp_path):
    """`make_runner(memory_bytes, types)`: a `TensorRTRunner` on a fake engine, and the engines made."""
    from livediff.accelerators.tensorrt_backend import SharedContextMemory, TensorRTRunner

    engines: dict[bytes, FakeEngine] = {}
    trt = FakeTensorRT(engines)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: SimpleNamespace(cuda_stream=0))
    memory = SharedContextMemory(torch.device("cpu"))

    def make_runner(size: int, types: dict[str, str] = TYPES) -> TensorRTRunner:
        data = f"engine {len(engines)}".encode()
        engines[data] = engine = FakeEngine(types, size)
        engine.trt = trt
        path = tmp_path / f"{len(engines)}.plan"
        path.write_bytes(data)
        return TensorRTRunner(FUNCTION, path, torch.device("cpu"), memory)

    make_runner.memory = memory
    make_runner.trt = trt
    return make_runner


def test_engines_share_one_context_memory_as_large_as_the_largest(fake_tensorrt):
    """UNet, ControlNet and VAE contexts each held their own scratch memory; now one buffer serves all,
    grown when a later engine needs more, every context pointed at it."""
    runners = [fake_tensorrt(size) for size in (1000, 4000, 2500)]
    contexts = [runner.context for runner in runners]
    strategy = fake_tensorrt.trt.ExecutionContextAllocationStrategy.USER_MANAGED
    assert all(context.strategy == strategy for context in contexts)
    buffer = fake_tensorrt.memory.buffer
    assert buffer.numel() == 4000
    assert {context.memory for context in contexts} == {(buffer.data_ptr(), 4000)}
    for runner in runners:
        runner(torch.zeros(4, 2, dtype=torch.bfloat16))  # the fake checks each ran with enough memory


def test_outputs_are_allocated_once_per_input_shape_and_types_include_bf16_and_bool(fake_tensorrt):
    runner = fake_tensorrt(100)
    kept = [runner(torch.zeros(4, 2, dtype=torch.bfloat16)) for _ in range(5)]  # all alive: no address reuse
    assert len({outputs["y"].data_ptr() for outputs in kept}) == 1 and kept[0]["y"].shape == (4, 2)
    assert kept[0]["y"].dtype == torch.float16 and kept[0]["mask"].dtype == torch.bool
    other = runner(torch.zeros(2, 2, dtype=torch.bfloat16))
    assert other["y"].shape == (2, 2) and other["y"].data_ptr() != kept[0]["y"].data_ptr()
    again = runner(torch.zeros(4, 2, dtype=torch.bfloat16))
    assert again["mask"].data_ptr() == kept[0]["mask"].data_ptr()
    assert runner.context.addresses["y"] == again["y"].data_ptr()


def test_a_tensor_type_livediff_cannot_bind_is_one_sentence(fake_tensorrt):
    from livediff.errors import AcceleratorError

    with pytest.raises(AcceleratorError, match=r"types livediff does not bind: mask \(DataType.INT8\)"):
        fake_tensorrt(100, dict(TYPES, mask="INT8"))


def test_the_backend_fingerprints_the_weights_once_per_load(monkeypatch, tmp_path):
    """Every `runner()` call used to hash the weights again (one device→host copy per tensor); now once
    per set of loaded weights, across calls and rebuilt functions, and again after an in-place change."""
    from livediff.accelerators import engine_cache, tensorrt_backend
    from livediff.accelerators.base import AcceleratorOptions
    from livediff.pipelines.runners import build_target

    hashed = []
    fingerprint = engine_cache.weights_fingerprint
    monkeypatch.setattr(engine_cache, "weights_fingerprint", lambda module: hashed.append(module) or fingerprint(module))
    monkeypatch.setattr(tensorrt_backend, "check_tensorrt_supported",
                        lambda device, dtype: SimpleNamespace(__version__="10.8.0"))
    monkeypatch.setattr(tensorrt_backend, "compute_capability", lambda device: "sm_89")
    monkeypatch.setattr(tensorrt_backend, "build_engine", lambda graph, engine, *rest: engine.write_bytes(b"engine"))
    monkeypatch.setattr(tensorrt_backend, "TensorRTRunner", lambda function, path, *rest: path)
    config = StreamConfig(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32")
    backend = tensorrt_backend.TensorRTBackend(build_target(config), AcceleratorOptions(cache_dir=tmp_path))
    monkeypatch.setattr(backend.graphs, "artifact", lambda function: tmp_path / "graph.onnx")
    decoder = tiny_networks()["vae_decoder"]
    for _ in range(5):
        backend.runner(decoder)
    backend.runner(tiny_networks()["vae_decoder"])  # a rebuilt stream: new function, same weights
    assert len(hashed) == 1
    weight = next(decoder.parameters())  # the process's shared tiny VAE: put back as it was afterwards
    kept = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1.0)
        backend.runner(decoder)
        assert len(hashed) == 2
    finally:
        with torch.no_grad():
            weight.copy_(kept)


class ReusedOutputsRunner:
    """The eager runner with `TensorRTRunner`'s output contract: one set of output buffers per input
    shapes, overwritten by every later call with those shapes."""

    def __init__(self, runner):
        self.runner = runner
        self.buffers: dict[tuple, list[torch.Tensor]] = {}

    def __call__(self, *inputs):
        outputs = self.runner(*inputs)
        shapes = tuple(tuple(t.shape) for t in inputs)
        buffers = self.buffers.setdefault(shapes, [torch.empty_like(t) for t in outputs.values()])
        for buffer, result in zip(buffers, outputs.values()):
            buffer.copy_(result)
        return NetworkOutputs.of(self.runner.function, buffers)


@pytest.mark.parametrize("mode, cfg_type", [("video", "initialize"), ("img2img", "self")])
def test_the_streams_consume_outputs_before_the_runner_reuses_them(monkeypatch, mode, cfg_type):
    """Reused output buffers change nothing: warm-up, residual stock and bank writes (every frame here)
    take what they keep before the next call of the same shapes."""
    from livediff.accelerators.eager import EagerBackend

    def frames(pipe):
        pipe.prepare(prompt="oil painting", guidance_scale=1.5, delta=0.5)
        return [pipe(torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i))) for i in range(5)]

    settings: dict[str, Any] = dict(model="tiny", mode=mode, t_index_list=[20, 30, 40], cfg_type=cfg_type, width=SIZE, height=SIZE,
                    device="cpu", dtype="float32", seed=2)
    if mode == "video":
        settings["bank"] = dict(cache_interval=1)
    expected = frames(load_pipeline(**settings))
    runner = EagerBackend.runner
    monkeypatch.setattr(EagerBackend, "runner", lambda self, function: ReusedOutputsRunner(runner(self, function)))
    assert all(torch.equal(a, b) for a, b in zip(frames(load_pipeline(**settings)), expected))
