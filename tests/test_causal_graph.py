"""The causal transformer as a graph (issue 16, item 4): `CausalTransformerFunction`, one chunk's
denoising call as a pure function of tensors with the rolling cache as explicit inputs and the
chunk's new keys/values as outputs, the ring placement left to `RollingKVCache` between calls.

* it equals the eager `CausalWanTransformer` (float64, 1e-9) chunk after chunk, cache empty, partly
  filled, full and sliding, predictions and the keys/values that enter the cache;
* it traces as one graph (`torch._dynamo.explain`: 0 breaks, what compile(fullgraph=True) needs);
* it exports to ONNX (opset 18, static shapes but rows) with only TensorRT-native ops, and ONNX
  Runtime driving a stream through the ring matches eager (float32, 1e-4 relative); the cache is
  really read: filled slots move the prediction, empty slots are not attended to; so is every
  cross-attention layer's text key and value (the prompt comes in as those, once per prompt);
* it runs on `meta` in float16 for 3 chunks, as does the eager runner (no host reads), and on CPU
  steady chunks read nothing back (the audit of test_sync_audit).
"""
from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch

from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.onnx_export import export_onnx
from livediff.accelerators.tensorrt_ops import unsupported_ops
from livediff.network_inputs import NetworkInputs
from livediff.errors import ConfigError
from livediff.pipelines.causal.attention import check_rotary_table
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.graph import CausalTransformerFunction
from livediff.pipelines.causal.presets import TINY_WAN_CAUSAL, build_tiny_wan_causal
from livediff.pipelines.causal.transformer import CausalWanTransformer

TOL = 1e-9
REL_TOLERANCE = 1e-4
BATCH, CHANNELS, TEXT = 2, TINY_WAN_CAUSAL["in_channels"], 5
PIXELS = 32  # 4x4 latents, 2x2 patches per frame
LATENT = PIXELS // 8
CONFIG = CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=2, cache_after="last_step")


def stream(chunks: int, frames: int, dtype, seed: int = 1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(BATCH, CHANNELS, frames, LATENT, LATENT, generator=g, dtype=dtype).to(device)
               for _ in range(chunks)]
    timesteps = [(torch.rand(BATCH, generator=g, dtype=dtype) * 999).to(device) for _ in range(chunks)]
    text = torch.randn(BATCH, TEXT, TINY_WAN_CAUSAL["text_dim"], generator=g, dtype=dtype).to(device)
    return latents, timesteps, text


def staged(cache) -> list[torch.Tensor]:
    return [t for layer in cache.layers for t in cache._staged[layer]]


@pytest.fixture(scope="module")
def model64():
    return build_tiny_wan_causal(seed=0, dtype=torch.float64)


@pytest.fixture(scope="module")
def model32():
    return build_tiny_wan_causal(seed=0)


# --- 1. the function is the eager runner ---------------------------------------------------------

@pytest.mark.parametrize("config", [CONFIG, CausalConfig(chunk_frames=2, sink_chunks=0, window_chunks=2,
                                                         cache_after="last_step")])
def test_function_equals_the_causal_transformer(model64, config):
    """5 chunks: an empty cache, partly filled, full, then sliding (the ring overwrites its oldest slot).
    The ring placement is `RollingKVCache`'s: the function's new keys/values are staged and committed."""
    causal = CausalWanTransformer(model64, config)
    function = CausalTransformerFunction(model64, config, text_tokens=TEXT).eval()
    eager_cache, graph_cache = causal.new_cache(BATCH, LATENT, LATENT), causal.new_cache(BATCH, LATENT, LATENT)
    latents, timesteps, text = stream(5, config.chunk_frames, torch.float64)
    fills = []
    with torch.no_grad():
        for chunk, t in zip(latents, timesteps):
            fills.append(int(graph_cache.filled.sum()))
            expected = causal(chunk, t, text, eager_cache)
            outputs = function(*function.inputs_for(chunk, t, text, graph_cache).ordered(function.input_names))
            assert [tuple(o.shape) for o in outputs] == function.output_shapes([chunk])
            assert (function.stage_outputs(graph_cache, outputs) - expected).abs().max() < TOL
            assert all((a - b).abs().max() < TOL for a, b in zip(staged(graph_cache), staged(eager_cache)))
            eager_cache.commit(), graph_cache.commit()
    slots = graph_cache.filled.numel()
    assert fills[0] == 0 and 0 < fills[1] < slots and fills[-1] == slots  # empty, partly filled, full
    assert all(torch.equal(a, b) for a, b in zip(graph_cache.tensors(), eager_cache.tensors()))


def test_shapes_names_and_state_are_declared(model32):
    function = CausalTransformerFunction(model32, CONFIG, text_tokens=TEXT)
    inputs = function.example_inputs(3, PIXELS, PIXELS, torch.float32, "cpu")
    layers, texts = len(function.layers), len(function.text_layers)
    start = function.input_names.index(f"cache_key.{function.layers[0]}")
    assert start == 4 + 2 * texts and texts == layers
    assert len(inputs) == len(function.input_names) == start + 2 * layers + 1
    assert all(t.shape[0] == 3 for t in inputs)  # rows first everywhere (the exporter's dynamic axis)
    tokens, slots = (LATENT // 2) ** 2, CONFIG.cache_chunks * (LATENT // 2) ** 2
    assert function.input_names[:5] == ("latents", "timestep", "rotary_cos", "rotary_sin", "text_key.blocks.0.attn2")
    assert all(tuple(t.shape) == (3, TEXT, 2, 16) for t in inputs[4:start])  # the prompt: text K/V per layer
    assert tuple(inputs[start].shape) == (3, slots, 2, 16) and tuple(inputs[-1].shape) == (3, slots)
    # every input is state: `inputs_for` keeps each at a fixed address (test_causal_graph_runner.py)
    assert [function.input_names[i] for i in function.state_inputs()] == list(function.input_names)
    assert function.output_shapes(inputs) == [(3, CHANNELS, 1, LATENT, LATENT)] + [(3, tokens, 2, 16)] * 2 * layers
    assert ("causal", ("chunk_frames", 1), ("sink_chunks", 1), ("window_chunks", 2)) in function.variant()
    assert ("text_kv_tokens", TEXT) in function.variant()  # not a graph that took raw text embeddings
    with pytest.raises(ConfigError, match="static resolution"):
        function.spatial_axes()


# --- 2. one graph --------------------------------------------------------------------------------

def test_traces_as_one_graph(model32):
    function = CausalTransformerFunction(model32, CONFIG, text_tokens=TEXT).eval()
    inputs = function.example_inputs(2, PIXELS, PIXELS, torch.float32, "cpu")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(function)(*inputs)
    assert explained.graph_break_count == 0, [str(reason.reason) for reason in explained.break_reasons]
    assert explained.graph_count == 1


# --- 3. ONNX: TensorRT-native ops, ONNX Runtime = eager, the cache is read -----------------------

@pytest.fixture(scope="module")
def exported(model32, tmp_path_factory):
    function = CausalTransformerFunction(model32, CONFIG, text_tokens=TEXT).eval()
    path = export_onnx(function, tmp_path_factory.mktemp("causal_graph"), height=PIXELS, width=PIXELS,
                       resolution=ResolutionRange.static(PIXELS, PIXELS), dtype=torch.float32, device="cpu",
                       opset=18, rows=BATCH)
    return function, path


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def test_exports_with_native_tensorrt_ops_and_static_shapes(exported):
    function, path = exported
    graph = onnx.load(str(path), load_external_data=False)
    assert unsupported_ops(graph) == []
    for value in (*graph.graph.input, *graph.graph.output):
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert dims[0] == "rows" and all(isinstance(d, int) and d > 0 for d in dims[1:]), (value.name, dims)


def test_onnx_runtime_drives_a_stream_like_eager(model32, exported):
    """ONNX Runtime's outputs go through the ring (`RollingKVCache`) chunk after chunk; the eager runner
    runs the same stream; every prediction and committed cache agrees within 1e-4 (float32)."""
    from livediff.accelerators.onnxruntime_backend import OnnxRuntimeRunner

    function, path = exported
    runner = OnnxRuntimeRunner(function, path, torch.device("cpu"))
    causal = CausalWanTransformer(model32, CONFIG)
    eager_cache, graph_cache = causal.new_cache(BATCH, LATENT, LATENT), causal.new_cache(BATCH, LATENT, LATENT)
    latents, timesteps, text = stream(4, 1, torch.float32, seed=3)
    with torch.no_grad():
        for chunk, t in zip(latents, timesteps):
            expected = causal(chunk, t, text, eager_cache)
            outputs = runner(*function.inputs_for(chunk, t, text, graph_cache).ordered(function.input_names))
            assert relative_error(function.stage_outputs(graph_cache, outputs), expected) < REL_TOLERANCE
            assert all(relative_error(a, b) < REL_TOLERANCE for a, b in zip(staged(graph_cache), staged(eager_cache)))
            eager_cache.commit(), graph_cache.commit()
    assert bool(graph_cache.filled.all())


def test_the_graph_reads_filled_slots_and_ignores_empty_ones(model32, exported):
    """A partly filled cache (sink + 1 of 2 window chunks): changing the filled slots' keys or values moves
    ONNX Runtime's prediction; garbage in the empty slot changes nothing; emptying the mask changes it.
    Every layer's text key and value is read too (changing any one moves the prediction)."""
    from livediff.accelerators.onnxruntime_backend import OnnxRuntimeRunner

    function, path = exported
    runner = OnnxRuntimeRunner(function, path, torch.device("cpu"))
    causal = CausalWanTransformer(model32, CONFIG)
    cache = causal.new_cache(BATCH, LATENT, LATENT)
    latents, timesteps, text = stream(3, 1, torch.float32, seed=4)
    with torch.no_grad():
        for chunk, t in zip(latents[:2], timesteps[:2]):
            causal(chunk, t, text, cache)
            cache.commit()
        inputs = dict(function.inputs_for(latents[2], timesteps[2], text, cache))
        filled = inputs["cache_filled"][0] > 0.5
        assert 0 < int(filled.sum()) < filled.numel()  # partly filled
        base = runner(*NetworkInputs(inputs).ordered(function.input_names))["noise_pred"]
        assert relative_error(base, function(*NetworkInputs(inputs).ordered(function.input_names))[0]) < REL_TOLERANCE

        def run_with(name: str, change) -> torch.Tensor:
            moved = {**inputs, name: change(inputs[name].clone())}
            return runner(*NetworkInputs(moved).ordered(function.input_names))["noise_pred"]

        def in_filled(t, value):
            t[:, filled] = value
            return t

        def in_empty(t, value):
            t[:, ~filled] = value
            return t

        for name in (n for n in inputs if n.startswith("text_")):  # every cross-attention layer's text K/V
            # (scaled: a constant added to every key leaves the softmax unchanged)
            assert float((run_with(name, lambda t: t * 2) - base).abs().max()) > 1e-3
        for name in (n for n in inputs if n.startswith(("cache_key.", "cache_value."))):  # every layer's K/V
            assert float((run_with(name, lambda t: in_filled(t, t[:, filled] + 1)) - base).abs().max()) > 1e-3
            assert float((run_with(name, lambda t: in_empty(t, 1e3)) - base).abs().max()) == 0.0
        assert float((run_with("cache_filled", torch.zeros_like) - base).abs().max()) > 1e-3


# --- 4. no host reads: meta float16, and the CPU audit ------------------------------------------

def checked(inputs) -> tuple[torch.Tensor, ...]:
    for tensor in inputs:
        assert tensor.device.type == "meta", tensor.device
        assert not tensor.is_floating_point() or tensor.dtype in (torch.float16, torch.float32), tensor.dtype
    return inputs


def test_meta_float16_dry_run():
    """The function driven through the ring for 3 chunks and the eager runner (cache_after='final') for 3
    chunks, all on `meta` in float16: any value read on the host would raise here."""
    model = build_tiny_wan_causal(seed=0, dtype=torch.float16).to("meta")
    config = CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=2)
    causal = CausalWanTransformer(model, config)
    function = CausalTransformerFunction(model, config, text_tokens=TEXT).eval()
    graph_cache, eager_cache = causal.new_cache(BATCH, LATENT, LATENT), causal.new_cache(BATCH, LATENT, LATENT)
    latents, timesteps, text = stream(3, 1, torch.float16, device="meta")
    with torch.no_grad():
        for chunk, t in zip(latents, timesteps):
            named = function.inputs_for(chunk, t, text, graph_cache)
            inputs = checked(function.adapt_inputs(*named.ordered(function.input_names)))
            first_text, first_cache = f"text_key.{function.text_layers[0]}", f"cache_key.{function.layers[0]}"
            assert {named["latents"].dtype, named[first_text].dtype, named[first_cache].dtype} == {torch.float16}
            prediction = function.stage_outputs(graph_cache, function(*inputs))
            graph_cache.commit()
            eager = causal(chunk, t, text, eager_cache)
            causal.finish_chunk(eager_cache, clean=chunk, text=text)
            for out in (prediction, eager):
                assert out.device.type == "meta" and out.dtype == torch.float16 and out.shape == chunk.shape
    assert graph_cache.chunks == eager_cache.chunks == 3
    assert all(t.device.type == "meta" for t in graph_cache.tensors())


def test_the_rotary_check_still_refuses_a_foreign_table_on_a_real_device():
    """The meta dry run skips the table comparison (no values); on CPU it still compares exactly."""
    model = build_tiny_wan_causal(seed=0)
    check_rotary_table(model.rope)
    model.rope.freqs_cos = model.rope.freqs_cos * (1 + 1e-6)
    with pytest.raises(ConfigError, match="rotary table was not built"):
        check_rotary_table(model.rope)
    check_rotary_table(build_tiny_wan_causal(seed=0, dtype=torch.float16).to("meta").rope)


def test_steady_chunks_read_nothing_back(model32):
    """CPU audit (test_sync_audit's counters): building a call's inputs from the cache, the call and the ring
    placement read no value back and copy no host data in."""
    from test_sync_audit import HostTraffic, SyncOps

    function = CausalTransformerFunction(model32, CONFIG, text_tokens=TEXT).eval()
    cache = CausalWanTransformer(model32, CONFIG).new_cache(BATCH, LATENT, LATENT)
    latents, timesteps, text = stream(5, 1, torch.float32, seed=5)
    traffic = HostTraffic()
    with torch.no_grad():
        for k, (chunk, t) in enumerate(zip(latents, timesteps)):
            if k < 2:
                function.stage_outputs(cache, function(*function.inputs_for(chunk, t, text, cache).ordered(function.input_names)))
                cache.commit()
                continue
            with traffic, SyncOps(traffic):
                function.stage_outputs(cache, function(*function.inputs_for(chunk, t, text, cache).ordered(function.input_names)))
                cache.commit()
    assert traffic.seen == Counter()
