"""How the networks run: eager PyTorch, torch.compile (+ CUDA graphs), ONNX Runtime or TensorRT.

`build_runners(name, models, config, options)` is the one entry point; an accelerator that cannot
do what was asked raises `AcceleratorError` or `ConfigError` — there is never a silent fallback to
another backend.
"""
from __future__ import annotations

import torch

from livediff.accelerators.base import AcceleratorOptions, Backend, ResolutionRange, Runners
from livediff.accelerators.networks import runners_for
from livediff.errors import ConfigError

ACCELERATORS = ("eager", "compile", "onnxruntime", "tensorrt")

__all__ = ["ACCELERATORS", "AcceleratorOptions", "ResolutionRange", "Runners", "build_runners", "check_accelerator",
           "make_backend"]


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


def check_accelerator(name: str, config, options: AcceleratorOptions | dict | None = None) -> AcceleratorOptions:
    """Reject impossible combinations before any weights are loaded; returns the validated options."""
    from livediff.pipelines.models import resolve_dtype

    if name not in ACCELERATORS:
        raise ConfigError(f"accelerator {name!r} is not one of {', '.join(ACCELERATORS)}")
    options = _options(options)
    device, dtype = torch.device(config.device), resolve_dtype(config.dtype, config.device)
    if name != "eager":
        options.resolution_for(config.height, config.width)
    if name == "compile":
        from livediff.accelerators.compiled import check_compile_supported

        check_compile_supported(device, options.cuda_graphs)
    elif options.cuda_graphs:
        raise ConfigError(f"cuda_graphs=True is an option of accelerator 'compile', not {name!r}")
    if name == "onnxruntime":
        from livediff.accelerators.onnxruntime_backend import check_precision, providers_for

        check_precision(dtype, device)
        providers_for(device)
    if name == "tensorrt":
        from livediff.accelerators.tensorrt_backend import check_tensorrt_supported

        check_tensorrt_supported(device, dtype)
    return options


def make_backend(name: str, models, config, options: AcceleratorOptions, progress=None) -> Backend:
    """The backend object behind `name`; `progress(network, message, done, total)` hears about builds."""
    if name == "eager":
        from livediff.accelerators.eager import EagerBackend

        return EagerBackend()
    if name == "compile":
        from livediff.accelerators.compiled import CompileBackend, check_compile_supported

        return CompileBackend(options.compile_mode, check_compile_supported(torch.device(config.device),
                                                                            options.cuda_graphs))
    if name == "onnxruntime":
        from livediff.accelerators.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(models, config, options, progress)
    from livediff.accelerators.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(models, config, options, progress)


def build_runners(name: str, models, config, options: AcceleratorOptions | dict | None = None) -> Runners:
    """Runners for the three stream networks of `models` on backend `name`.

    `config` (a StreamConfig) gives device, resolution and the row counts static backends must
    support.
    """
    options = check_accelerator(name, config, options)
    return runners_for(models, make_backend(name, models, config, options))
