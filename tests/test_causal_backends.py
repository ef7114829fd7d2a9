"""The causal video pipeline on accelerators (issue 16, item 4): `load_pipeline(mode="causal-video",
accelerator=...)` runs its transformer calls as `CausalTransformerFunction` through the backend's runner,
the ring placement between calls left to `RollingKVCache` (`pipelines.causal.runners`).

* onnxruntime and openvino give the eager pipeline's frames over a sliding window, with a prompt change:
  the parity matrix's causal cases (`parity_matrix`);
* a second pipeline with the same settings exports nothing: the graph comes from the `EngineCache` (its
  key holds the function's variant: chunk, sink, window, text length);
* compile is accepted and wired (its runner is a `CompiledRunner` of the function; the function traces
  with 0 graph breaks in test_causal_graph.py; compiling it on CPU takes minutes, so it is not run here);
* bad accelerator options are refused with a sentence, before any weights load (tensorrt is accepted:
  test_causal_tensorrt.py).
"""
from __future__ import annotations

import pytest
import torch

from livediff.errors import ConfigError
from livediff.pipelines import load_pipeline
from livediff.pipelines.causal.runners import CAUSAL_ACCELERATORS, GraphCausalTransformer
from media import clip_frame

SIZE = 64
REL_TOLERANCE = 1e-4
OPTIONS = dict(chunk_frames=1, sink_chunks=1, window_chunks=1)
CLIP = 9  # 1 + 4 + 4 video frames: three chunks of one latent frame


def build(accelerator="eager", **overrides):
    settings = dict(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                    dtype="float32", t_index_list=[20, 40], seed=7, causal=OPTIONS, accelerator=accelerator)
    settings.update(overrides)
    return load_pipeline(**settings)


def run(pipe) -> list[torch.Tensor]:
    pipe.prepare(prompt="claymation")
    outs = []
    for i in range(CLIP):
        outs += pipe(clip_frame(i, SIZE, SIZE), output="tensor")
    return outs


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("causal_engines")


def test_a_second_pipeline_reuses_the_exported_graph(tmp_path, monkeypatch):
    from livediff.accelerators import onnx_export

    heard = []
    options = dict(cache_dir=tmp_path)
    first = build("onnxruntime", accelerator_options=options, progress=lambda *event: heard.append(event))
    assert ("causal_transformer", "exporting ONNX", 0, None) in heard
    graphs = list(tmp_path.glob("onnx-causal_transformer-*"))
    assert len(graphs) == 1

    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **k: pytest.fail("exported again"))
    heard.clear()
    second = build("onnxruntime", accelerator_options=options, progress=lambda *event: heard.append(event))
    assert [e for e in heard if e[1] == "exporting ONNX"] == []
    assert second.causal.runner is not first.causal.runner  # its own session over the same cached graph
    assert list(tmp_path.glob("onnx-causal_transformer-*")) == graphs
    # another cache size is another graph (the key holds the function's variant)
    monkeypatch.undo()
    third = build("onnxruntime", accelerator_options=options, causal=dict(OPTIONS, window_chunks=2))
    assert third.causal.function.variant() != first.causal.function.variant()
    assert len(list(tmp_path.glob("onnx-causal_transformer-*"))) == 2


def test_compile_is_wired_but_not_run():
    """torch.compile of the function takes minutes on CPU: only that the pipeline is built on it."""
    from livediff.accelerators.compiled import CompiledRunner

    pipe = build("compile")
    assert isinstance(pipe.causal, GraphCausalTransformer) and isinstance(pipe.causal.runner.run, CompiledRunner)
    assert pipe.causal.runner.run.function is pipe.causal.function


@pytest.mark.parametrize("accelerator, options, words", [
    ("eager", dict(opset=18), "accelerator_options do not apply to accelerator 'eager'"),
    ("onnxruntime", dict(resolution=(64, 64, 128, 128)), "the causal transformer's graph has a static resolution"),
])
def test_what_cannot_run_is_refused_before_weights_load(accelerator, options, words, monkeypatch):
    from livediff.pipelines.causal import models

    monkeypatch.setattr(models, "load_causal_models", lambda *a: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError) as caught:
        build(accelerator, accelerator_options=options)
    assert words in str(caught.value)
    assert CAUSAL_ACCELERATORS == ("eager", "compile", "onnxruntime", "tensorrt", "openvino")
