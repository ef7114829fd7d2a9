"""The graph matrix's check, shared by its test files (split so test workers take them in parallel):
the function each backend receives traces as one graph (`torch._dynamo.explain`: 0 breaks, what
`compile(fullgraph=True)` needs) and exports to ONNX with only ops TensorRT 10.0 parses natively
(`accelerators.tensorrt_ops`); variants with new inputs also run in ONNX Runtime against eager.

What varies the traced function: the plain UNet serves img2img and txt2img with every CFG type and
frame-buffer size (those change the rows axis only, which export keeps dynamic); the banked UNet's
graph changes with the bank layout (off, dense, sparse) and with token merging — FIFO and merged
memories have the same layout (merging happens between calls, outside the graph), so one stands for
both; sparse banks with token merging are refused by the config. SDXL's UNets take the added
conditioning (pooled text, size ids) as two more inputs; ControlNets add a control image each and their scales;
an IP-Adapter the image key and value of every cross-attention layer.
"""
from __future__ import annotations

import onnx
import torch

from livediff import load_pipeline
from livediff.accelerators.base import ResolutionRange
from livediff.accelerators.onnx_export import export_onnx
from livediff.accelerators.tensorrt_ops import unsupported_ops
from livediff.networks import BankedUNetFunction, stream_networks

SIZE = 64
IP_ADAPTER = dict(model="random", image_encoder="random")
VARIANTS = {
    "unet": None,
    "vae_encoder": None,
    "vae_decoder": None,
    "bank off, token merging": dict(bank=False, token_merge_ratio=0.5),
    "dense bank, token merging": dict(bank=dict(merge=False), token_merge_ratio=0.5),
    "sparse bank": dict(bank=dict(sparse_keep_ratio=0.5)),
    "bank without fusion": dict(bank=dict(fusion_strength=0.0)),
    "sdxl unet with IP-Adapter": dict(model="tiny-sdxl", network="unet", ip_adapter=IP_ADAPTER),
    # SDXL's added conditioning, the IP-Adapter's image K/V, two ControlNets and the dense bank with
    # fusion, all graph inputs (the plain UNet composes ControlNets the same way, `networks.run_unet`)
    "sdxl dense bank with fusion, IP-Adapter and two ControlNets": dict(
        model="tiny-sdxl", bank=dict(merge=True, max_frames=2), ip_adapter=IP_ADAPTER,
        controlnet=[dict(model="random", preprocessor="tile"), dict(model="random", preprocessor="tile", scale=0.5)]),
}
#: variants whose exported graph is also run by ONNX Runtime against eager (new inputs: added
#: conditioning, image K/V, control images and scales)
RUN_BY_ORT = ("sdxl unet with IP-Adapter", "sdxl dense bank with fusion, IP-Adapter and two ControlNets")


def function_for(variant: str):
    settings = dict(VARIANTS[variant] or {"network": variant})
    model = settings.pop("model", "tiny")
    if "network" in settings:
        network = settings.pop("network")
        pipe = load_pipeline(model=model, width=SIZE, height=SIZE, device="cpu", dtype="float32", **settings)
        return stream_networks(pipe.models)[network]
    pipe = load_pipeline(model=model, mode="video", t_index_list=[20, 30, 40], width=SIZE, height=SIZE,
                         device="cpu", dtype="float32", **settings)
    return BankedUNetFunction(pipe.banked_unet, pipe.models.vae_scale_factor).eval()


def check_variant(variant: str, tmp_path) -> None:
    function = function_for(variant)
    rows = 4 if function.stream_rows else 2  # e.g. 2 stages x 2 frames, or full CFG's doubled rows
    inputs = function.example_inputs(rows, SIZE, SIZE, torch.float32, "cpu")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(function)(*inputs)
    assert explained.graph_break_count == 0, [str(reason.reason) for reason in explained.break_reasons]
    path = export_onnx(function, tmp_path, height=SIZE, width=SIZE, resolution=ResolutionRange.static(SIZE, SIZE),
                       dtype=torch.float32, device="cpu", opset=18, rows=rows)
    assert unsupported_ops(onnx.load(str(path), load_external_data=False)) == []
    if variant in RUN_BY_ORT:
        from livediff.accelerators.onnxruntime_backend import OnnxRuntimeRunner

        def outputs(out) -> list:
            return list(out) if isinstance(out, (tuple, list)) else [out]

        bank = len(function.banked.layout.input_shapes(1)) if isinstance(function, BankedUNetFunction) else 0
        new = slice(3, len(inputs) - bank)  # added conditioning, image K/V, control images and scales
        with torch.no_grad():
            expected = outputs(function(*inputs))
            moved = outputs(function(*inputs[:3], *(t + 1 for t in inputs[new]), *inputs[new.stop:]))
        for got, want in zip(outputs(OnnxRuntimeRunner(function, path, torch.device("cpu"))(*inputs)), expected):
            assert float((got - want).abs().max() / want.abs().max()) < 1e-4
        assert float((moved[0] - expected[0]).abs().max()) > 1e-3  # the new inputs reach the prediction


PLAIN = ("unet", "vae_encoder", "vae_decoder")
BANKED = ("bank off, token merging", "dense bank, token merging", "sparse bank", "bank without fusion")
SDXL = ("sdxl unet with IP-Adapter", "sdxl dense bank with fusion, IP-Adapter and two ControlNets")
assert set(PLAIN + BANKED + SDXL) == set(VARIANTS)
