"""`onnxruntime`: each network exported to ONNX once (cached), run by ONNX Runtime on the CPU or CUDA
(`accelerators.onnxruntime_backend`)."""
from __future__ import annotations

from livediff.accelerators.registry import BackendSpec, register


def check(target, options) -> None:
    from livediff.accelerators.onnxruntime_backend import check_precision, providers_for

    check_precision(target.dtype, target.device)
    providers_for(target.device)


def make(target, options, progress):
    from livediff.accelerators.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(target, options, progress)


SPEC = register(BackendSpec(
    name="onnxruntime", order=30, summary="ONNX Runtime, CPU or CUDA", factory=make,
    options=("cache_dir", "resolution", "opset", "build"),
    precisions={"cpu": ("float32",), "cuda": ("float32", "float16")},
    check=check, builds_ahead=True,
    doctor=("cpu", "cuda"),
))
