"""How the networks run: eager PyTorch, torch.compile (+ CUDA graphs), ONNX Runtime, TensorRT or OpenVINO.

`check_accelerator(name, target, options)` rejects impossible combinations before any weights load;
`make_backend(name, target, options)` gives the backend whose `runner(function)` runs a pure tensor
function (`livediff.networks`). An accelerator that cannot do what was asked raises
`AcceleratorError` or `ConfigError`: there is never a silent fallback to another backend. Nothing
here imports `livediff.pipelines`: the pipeline describes what it needs in a `BuildTarget`.
"""
from __future__ import annotations

from livediff.accelerators.base import AcceleratorOptions, Backend, BuildTarget, ResolutionRange, RowRange
from livediff.errors import ConfigError

ACCELERATORS = ("eager", "compile", "onnxruntime", "tensorrt", "openvino")

__all__ = ["ACCELERATORS", "AcceleratorOptions", "Backend", "BuildTarget", "ResolutionRange", "RowRange",
           "check_accelerator", "make_backend"]


def _options(options: AcceleratorOptions | dict | None) -> AcceleratorOptions:
    if options is None:
        return AcceleratorOptions()
    if isinstance(options, AcceleratorOptions):
        return options
    if isinstance(options, dict):
        unknown = set(options) - set(AcceleratorOptions.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown accelerator option(s) {', '.join(sorted(unknown))}; allowed: "
                              f"{', '.join(AcceleratorOptions.__dataclass_fields__)}")
        return AcceleratorOptions(**options)
    raise ConfigError(f"accelerator_options must be a dict or AcceleratorOptions, not {type(options).__name__}")


def check_accelerator(name: str, target: BuildTarget,
                      options: AcceleratorOptions | dict | None = None) -> AcceleratorOptions:
    """Reject impossible combinations before any weights are loaded; returns the validated options."""
    if name not in ACCELERATORS:
        raise ConfigError(f"accelerator {name!r} is not one of {', '.join(ACCELERATORS)}")
    options = _options(options)
    if name != "eager":
        options.resolution_for(target.height, target.width)
    if name == "compile":
        from livediff.accelerators.compiled import check_compile_supported

        check_compile_supported(target.device, options.cuda_graphs)
    elif options.cuda_graphs:
        raise ConfigError(f"cuda_graphs=True is an option of accelerator 'compile', not {name!r}")
    if name == "onnxruntime":
        from livediff.accelerators.onnxruntime_backend import check_precision, providers_for

        check_precision(target.dtype, target.device)
        providers_for(target.device)
    if name != "openvino" and (options.weights is not None or options.openvino_device != "CPU"):
        raise ConfigError(f"weights and openvino_device are options of accelerator 'openvino', not {name!r}")
    if name == "openvino":
        from livediff.accelerators.openvino_backend import check_openvino_supported

        check_openvino_supported(target.device, target.dtype, options)
    if name == "tensorrt":
        from livediff.accelerators.tensorrt_backend import check_tensorrt_supported
        from livediff.accelerators.tensorrt_ops import MAX_OPSET

        if options.opset > MAX_OPSET:
            raise ConfigError(f"opset {options.opset} is above {MAX_OPSET}, the newest TensorRT 10.0 parses")
        check_tensorrt_supported(target.device, target.dtype)
    return options


def make_backend(name: str, target: BuildTarget, options: AcceleratorOptions | dict | None = None,
                 progress=None) -> Backend:
    """The backend behind `name` (checked first); `progress(network, message, done, total)` hears about builds."""
    options = check_accelerator(name, target, options)
    if name == "eager":
        from livediff.accelerators.eager import EagerBackend

        return EagerBackend()
    if name == "compile":
        from livediff.accelerators.compiled import CompileBackend, check_compile_supported

        return CompileBackend(options.compile_mode, check_compile_supported(target.device, options.cuda_graphs),
                              target)
    if name == "onnxruntime":
        from livediff.accelerators.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(target, options, progress)
    if name == "openvino":
        from livediff.accelerators.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(target, options, progress)
    from livediff.accelerators.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(target, options, progress)
