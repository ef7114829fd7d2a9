"""The graph matrix: what TensorRT and `compile` users get, checked without a GPU, one variant per
distinct code path of the exported functions.

* `compile(fullgraph=True)` needs one graph: `torch._dynamo.explain` finds 0 breaks;
* TensorRT users build from a float16 export: each variant is exported in float16 (on the CPU, the
  function's weights cast to half) and must have only ops TensorRT 10.0 parses natively
  (`accelerators.tensorrt_ops`) and no precision surprise (`precision_problems`).

The float32 graphs every backend runs are exported, run and compared with eager frame for frame by
the parity matrix (`parity_matrix`), which also checks their ops. The variants: the plain UNet serves
img2img and txt2img with every CFG type and frame-buffer size (those change the rows axis only); the
banked UNet's graph changes with the bank layout (off, dense, sparse), token merging and fusion — FIFO
and merged memories have the same layout (merging happens between calls, outside the graph); SDXL's
UNets take the added conditioning, ControlNets a control image each and their scales, an IP-Adapter
the image key and value of every cross-attention layer; the causal transformer has its own graph.
"""
from __future__ import annotations

import copy

import onnx
import torch

from livediff import load_pipeline
from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.onnx_export import export_onnx
from livediff.accelerators.tensorrt_ops import unsupported_ops
from livediff.networks import BankedUNetFunction, stream_networks

SIZE = 64
IP_ADAPTER = dict(model="random", image_encoder="random")
CONTROLNET = [dict(model="random", preprocessor="tile", scale=0.5)]
VARIANTS = {
    "unet": None,
    "vae_encoder": None,
    "vae_decoder": None,
    "sparse bank without fusion": dict(bank=dict(sparse_keep_ratio=0.5, fusion_strength=0.0)),
    # SDXL's added conditioning, the IP-Adapter's image K/V (read by the bank's own attention
    # processors), a ControlNet's image and scale (composed in `networks.run_unet`, as in the plain
    # UNet), the dense bank with fusion and token merging: every input and every banked op in one graph.
    # The plain UNet's graph is the same code without the bank ("unet"); the bank off is this graph
    # without the bank's inputs; a second ControlNet repeats the same ops (the parity matrix runs two).
    "sdxl dense bank with fusion, token merging, IP-Adapter and a ControlNet": dict(
        model="tiny-sdxl", bank=dict(merge=True, max_frames=2), token_merge_ratio=0.5, ip_adapter=IP_ADAPTER,
        controlnet=CONTROLNET),
    "causal transformer": dict(model="tiny-wan-causal"),
}
#: float32 by design in a float16 graph: the UNet's timestep (its sinusoidal embedding is float32)
FLOAT32_INPUTS = frozenset({"timestep"})
#: inputs whose sinusoidal embeddings are computed in float32 (diffusers' `Timesteps`): a cast up whose
#: value comes from these alone is by design
EMBEDDED_INPUTS = frozenset({"timestep", "time_ids"})
#: the causal Wan transformer keeps more in float32 by design, as diffusers does for Wan (rotary
#: tables, its float32 layer norms and RMS norms): only float64 and undeclared inputs are refused there
CAUSAL_FLOAT32_INPUTS = frozenset({"timestep", "rotary_cos", "rotary_sin"})
#: ops a float32 value may feed after a cast up from float16: comparisons and tests, whose result is
#: a boolean (fusion's similarity threshold, the bank's empty-slot test), never float32 arithmetic
COMPARISONS = frozenset({"IsInf", "IsNaN", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal"})
#: float32 constants allowed in a float16 graph: the few numbers of the timestep embedding
SMALL_CONSTANT = 64


def function_for(variant: str):
    settings = dict(VARIANTS[variant] or {"network": variant})
    model = settings.pop("model", "tiny")
    if model == "tiny-wan-causal":
        from livediff.pipelines.causal.graph import CausalTransformerFunction

        pipe = load_pipeline(model=model, mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                             dtype="float32", t_index_list=[20, 40],
                             causal=dict(chunk_frames=1, sink_chunks=1, window_chunks=1))
        return CausalTransformerFunction(pipe.models.transformer, pipe.options.transformer_config,
                                         text_tokens=pipe.text_tokens).eval()
    if "network" in settings:
        network = settings.pop("network")
        pipe = load_pipeline(model=model, width=SIZE, height=SIZE, device="cpu", dtype="float32", **settings)
        return stream_networks(pipe.models)[network]
    pipe = load_pipeline(model=model, mode="video", t_index_list=[20, 30, 40], width=SIZE, height=SIZE,
                         device="cpu", dtype="float32", **settings)
    return BankedUNetFunction(pipe.banked_unet, pipe.models.vae_scale_factor).eval()


def precision_problems(model, float32_inputs: frozenset[str] = FLOAT32_INPUTS, upcasts: bool = False) -> list[str]:
    """What in a float16 ONNX graph is not float16 and not float32 by design (see the constants above);
    `upcasts`: float32 computation inside the graph is by design (the causal transformer)."""
    from onnx import TensorProto

    half, single, double = TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE
    floating = {half, single, double, TensorProto.BFLOAT16}
    problems = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            elem = value.type.tensor_type.elem_type
            if elem in floating and elem != half and not (kind == "input" and value.name in float32_inputs):
                problems.append(f"{kind} {value.name} is {TensorProto.DataType.Name(elem)}")
    for init in model.graph.initializer:
        size = 1
        for d in init.dims:
            size *= d
        if init.data_type == double or (init.data_type == single and size > SMALL_CONSTANT and not upcasts):
            problems.append(f"initializer {init.name} {list(init.dims)} is {TensorProto.DataType.Name(init.data_type)}")
    consumers: dict[str, list] = {}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inputs = {value.name for value in model.graph.input}

    def origins(name: str, seen: set) -> set[str]:
        """The graph inputs a value is computed from (constants and initializers count for none)."""
        if name in inputs:
            return {name}
        node = producers.get(name)
        if node is None or name in seen:
            return set()
        seen.add(name)
        return set().union(*(origins(i, seen) for i in node.input if i))
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None
        if to == double:
            problems.append(f"Cast {node.name} to DOUBLE")
        if to == single:
            uses = {c.op_type for c in consumers.get(node.output[0], [])}
            if not (upcasts or uses <= COMPARISONS or origins(node.input[0], set()) <= EMBEDDED_INPUTS):
                problems.append(f"Cast {node.name} to FLOAT feeds {sorted(uses - COMPARISONS)}")
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.t.data_type == double:
                    problems.append(f"Constant {node.name} is DOUBLE")
    return problems


def check_variant(variant: str, tmp_path) -> None:
    function = function_for(variant)
    rows = 4 if function.stream_rows else 2  # e.g. 2 stages x 2 frames, or full CFG's doubled rows
    if variant == "causal transformer":
        rows = 1  # one stream: the causal graph's rows are static
    inputs = function.example_inputs(rows, SIZE, SIZE, torch.float32, "cpu")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(function)(*inputs)
    assert explained.graph_break_count == 0, [str(reason.reason) for reason in explained.break_reasons]
    half = copy.deepcopy(function).half()
    path = export_onnx(half, tmp_path, height=SIZE, width=SIZE, resolution=ResolutionRange.static(SIZE, SIZE),
                       dtype=torch.float16, device="cpu", opset=18, rows=rows)
    model = onnx.load(str(path), load_external_data=False)
    assert unsupported_ops(model) == []
    causal = variant == "causal transformer"
    assert precision_problems(model, CAUSAL_FLOAT32_INPUTS if causal else FLOAT32_INPUTS, upcasts=causal) == []


PLAIN = ("unet", "vae_encoder", "vae_decoder", "causal transformer")
BANKED = ("sparse bank without fusion",)
SDXL = ("sdxl dense bank with fusion, token merging, IP-Adapter and a ControlNet",)
assert set(PLAIN + BANKED + SDXL) == set(VARIANTS)
