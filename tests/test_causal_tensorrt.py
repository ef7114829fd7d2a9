"""TensorRT engines of the causal transformer (issue 16 gap 3), checked without a GPU.

The causal pipeline runs on the image pipelines' TensorRT backend (`accelerators.tensorrt_backend`)
unchanged. TensorRT itself cannot run here, so its three calls are stood in for (the support check, the
engine build, the engine's runner) and everything up to them runs for real:

* the pipeline accepts accelerator 'tensorrt'; the backend exports the causal ONNX graph through the
  engine cache and hands it to the engine build: only TensorRT-native ops, the function's inputs and
  outputs by name (the cache among them), a static profile (one row; chunk tokens, cache slots and text
  tokens as the pipeline's settings make them); the stream then equals eager through that runner;
* the engine's cache key names every input's shape, so another chunk size, cache size, text length,
  precision, TensorRT version or GPU is another engine; ONNX keys keep their digests (no `inputs`);
* without the `tensorrt` package, the pipeline and the CLI say so in one sentence, before any weights load.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch

from livediff.accelerators import tensorrt_backend
from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.engine_cache import EngineKey
from livediff.accelerators.tensorrt_ops import unsupported_ops
from livediff.errors import AcceleratorError
from livediff.network_outputs import NetworkOutputs
from livediff.pipelines import load_pipeline
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.graph import CausalTransformerFunction
from livediff.pipelines.causal.presets import TINY_WAN_CAUSAL, build_tiny_wan_causal
from livediff.pipelines.causal.runners import GraphCausalTransformer, causal_build_target
from media import clip_frame

SIZE = 64
TOKENS = (SIZE // 8 // 2) ** 2  # one latent frame of 8x8 latents in 2x2 patches
OPTIONS = dict(chunk_frames=1, sink_chunks=1, window_chunks=2)
FRAMES = 9  # three chunks: the window of 2 fills
INSTALL = "accelerator 'tensorrt' needs TensorRT: install livediff[tensorrt] on a machine with CUDA"


class EngineStandIn:
    """Where `TensorRTRunner` would run the engine: the function itself, on the engine's inputs, its
    outputs written into buffers kept per input shapes as the runner's are (reused by later calls)."""

    def __init__(self, function, engine_path: Path, device, memory):
        assert engine_path.read_bytes() == b"engine"
        self.function = function
        self.outputs: dict[tuple, list[torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, *inputs):
        inputs = self.function.adapt_inputs(*inputs)
        results = self.function(*inputs)
        buffers = self.outputs.setdefault(tuple(tuple(t.shape) for t in inputs), [torch.empty_like(r) for r in results])
        for buffer, result in zip(buffers, results):
            buffer.copy_(result)
        return NetworkOutputs.of(self.function, buffers)


def settings(accelerator: str, **overrides) -> dict:
    values = dict(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                  dtype="float32", t_index_list=[20, 40], seed=7, causal=OPTIONS, accelerator=accelerator)
    values.update(overrides)
    return values


def run(pipe) -> list[torch.Tensor]:
    pipe.prepare(prompt="claymation")
    return [out for i in range(FRAMES) for out in pipe(clip_frame(i, SIZE, SIZE), output="tensor")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A causal pipeline on accelerator 'tensorrt' with TensorRT stood in for; what the build was given."""
    builds = []

    def build_engine(onnx_path, engine_path, profile, timing_cache, workspace_gb=None, progress=None):
        builds.append(dict(onnx=Path(onnx_path), profile=profile))
        Path(engine_path).write_bytes(b"engine")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tensorrt_backend, "check_tensorrt_supported",
                      lambda device, dtype: SimpleNamespace(__version__="10.0.1"))
        patch.setattr(tensorrt_backend, "compute_capability", lambda device: "sm_89")
        patch.setattr(tensorrt_backend, "build_engine", build_engine)
        patch.setattr(tensorrt_backend, "TensorRTRunner", EngineStandIn)
        cache_dir = tmp_path_factory.mktemp("causal_trt")
        pipe = load_pipeline(**settings("tensorrt", accelerator_options=dict(cache_dir=cache_dir)))
        return pipe, builds, cache_dir


# the fixture exports the causal graph for real (torch.onnx.export of the tiny model: ~17 s here, alone)
def test_tensorrt_builds_from_the_causal_export_with_a_static_profile(built):
    pipe, builds, cache_dir = built
    assert isinstance(pipe.causal, GraphCausalTransformer) and isinstance(pipe.causal.backend,
                                                                          tensorrt_backend.TensorRTBackend)
    (build,) = builds
    function = pipe.causal.function
    graph = onnx.load(str(build["onnx"]), load_external_data=False)
    assert unsupported_ops(graph) == []
    assert [v.name for v in graph.graph.input] == list(function.input_names)  # TensorRT binds by name
    assert [v.name for v in graph.graph.output] == list(function.output_names)
    profile = build["profile"]
    assert list(profile) == list(function.input_names)
    assert all(low == opt == high and low[0] == 1 for low, opt, high in profile.values())  # static, one row
    slots = pipe.cache.config.cache_chunks * TOKENS
    assert profile["rotary_cos"][0][1] == TOKENS and profile["cache_filled"][0] == (1, slots)
    assert profile[f"cache_key.{function.layers[0]}"][0][:2] == (1, slots)
    assert profile[f"text_key.{function.text_layers[0]}"][0][1] == pipe.text_tokens
    (entry,) = cache_dir.glob("tensorrt-causal_transformer-*")
    assert (entry / "model.plan").is_file()


def test_the_tensorrt_pipeline_streams_like_eager(built):
    pipe = built[0]
    eager = load_pipeline(**settings("eager"))
    outs, expected = run(pipe), run(eager)
    assert len(outs) == len(expected) == FRAMES
    assert max(float((a - b).abs().max()) for a, b in zip(outs, expected)) < 1e-4
    assert pipe.cache.chunks == 3 and bool(pipe.cache.filled.all())


def test_the_engine_key_names_what_must_rebuild_an_engine():
    model = build_tiny_wan_causal(seed=0)
    target = causal_build_target(SimpleNamespace(device="cpu", dtype="float32", height=SIZE, width=SIZE,
                                                 model="tiny-wan-causal"))
    resolution = ResolutionRange.static(SIZE, SIZE)

    def key(config=CausalConfig(**OPTIONS), text_tokens=5, precision="float16", version="10.0.1", gpu="sm_89"):
        function = CausalTransformerFunction(model, config, text_tokens=text_tokens)
        return tensorrt_backend.engine_key(function, target, target.rows_for(function), resolution, precision,
                                           version, gpu)

    base = key()
    named = {name: low for name, low, _, _ in base.as_json()["inputs"]}
    assert named["latents"] == [1, TINY_WAN_CAUSAL["in_channels"], 1, 8, 8] and named["rotary_cos"][1] == TOKENS
    assert named["cache_filled"] == [1, 3 * TOKENS] and named["text_value.blocks.0.attn2"][1] == 5
    assert base.as_json()["precision"] == "float16" and base.as_json()["builder"] == "tensorrt 10.0.1"
    others = [key(config=CausalConfig(**dict(OPTIONS, window_chunks=4))),  # cache slots
              key(config=CausalConfig(**dict(OPTIONS, chunk_frames=2))),  # chunk tokens
              key(text_tokens=7), key(precision="float32"), key(version="10.7.0"), key(gpu="sm_90")]
    assert len({base.digest(), *(k.digest() for k in others)}) == 1 + len(others)
    slots = {name: low for name, low, _, _ in others[0].as_json()["inputs"]}["cache_filled"]
    assert slots == [1, 5 * TOKENS]
    # keys without input shapes (ONNX graphs, OpenVINO models) keep the JSON, hence the digest, they had
    onnx_key = EngineKey(kind="onnx", network="n", model="m", loras=(), weights="w", resolution=(64, 64, 64, 64),
                         precision="float32", builder="b")
    assert "inputs" not in onnx_key.as_json()


@pytest.fixture
def no_tensorrt(monkeypatch):
    """A CUDA machine (as torch sees it) without the `tensorrt` package; loading weights is a failure."""
    from livediff.pipelines.causal import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setattr(models, "load_causal_models", lambda *a: pytest.fail("weights loaded"))


def test_without_the_tensorrt_package_the_pipeline_says_so_in_one_sentence(no_tensorrt):
    with pytest.raises(AcceleratorError) as caught:
        load_pipeline(**settings("tensorrt", device="cuda", dtype="float16"))
    assert str(caught.value) == INSTALL


def test_without_the_tensorrt_package_the_cli_prints_one_line(no_tensorrt, tmp_path, capsys):
    from livediff.app.cli import main
    from media import make_clip

    clip = make_clip(tmp_path / "in.mp4", n_frames=5, size=(SIZE, SIZE))
    code = main(["video", str(clip), "-o", str(tmp_path / "out.mp4"), "--mode", "causal-video", "--model",
                 "tiny-wan-causal", "--width", str(SIZE), "--height", str(SIZE), "--prompt", "claymation",
                 "--device", "cuda", "--dtype", "float16", "--accelerator", "tensorrt", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"livediff: error: {INSTALL}"
