"""`openvino`: the exported ONNX graphs converted by OpenVINO, run on Intel CPUs, GPUs or NPUs
(`accelerators.openvino_backend`); `pip install 'livediff[openvino]'`."""
from __future__ import annotations

from livediff.accelerators.registry import BackendSpec, register


def check(target, options) -> None:
    from livediff.accelerators.openvino_backend import check_openvino_supported

    check_openvino_supported(target.device, target.dtype, options)


def refuse_elsewhere(options, other: str) -> str | None:
    if options.weights is not None or options.openvino_device != "CPU":
        return f"weights and openvino_device are options of accelerator 'openvino', not {other!r}"
    return None


def make(target, options, progress):
    from livediff.accelerators.openvino_backend import OpenVINOBackend

    return OpenVINOBackend(target, options, progress)


SPEC = register(BackendSpec(
    name="openvino", order=50, summary="OpenVINO, Intel CPUs, GPUs and NPUs", factory=make,
    options=("cache_dir", "resolution", "opset", "build", "openvino_device", "weights"),
    precisions={"cpu": ("float32",)},  # the pipeline's tensors; the OpenVINO device is openvino_device
    check=check, refuse_elsewhere=refuse_elsewhere, builds_ahead=True,
    doctor=("cpu",), doctor_if_installed="openvino",
))
