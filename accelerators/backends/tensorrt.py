"""`tensorrt`: TensorRT engines built from the exported ONNX graphs, cached by everything that changes
them (`accelerators.tensorrt_backend`). CUDA only; `pip install 'livediff[tensorrt]'`."""
from __future__ import annotations

from livediff.accelerators.registry import BackendSpec, register
from livediff.errors import ConfigError


def check(target, options) -> None:
    from livediff.accelerators.tensorrt_backend import check_tensorrt_supported
    from livediff.accelerators.tensorrt_ops import MAX_OPSET

    if options.opset > MAX_OPSET:
        raise ConfigError(f"opset {options.opset} is above {MAX_OPSET}, the newest TensorRT 10.0 parses")
    check_tensorrt_supported(target.device, target.dtype)


def make(target, options, progress):
    from livediff.accelerators.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(target, options, progress)


SPEC = register(BackendSpec(
    name="tensorrt", order=40, summary="TensorRT engines, CUDA", factory=make,
    options=("cache_dir", "resolution", "opset", "build", "workspace_gb"),
    precisions={"cuda": ("float16", "float32")},
    check=check, builds_ahead=True,
    fixed_rows=True,  # an engine's profile is built for a range of rows: wider ranges cost build time and speed
    doctor=("cuda",),  # also when TensorRT is missing: the report then says what to install
))
