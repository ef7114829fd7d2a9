"""How the networks run: eager PyTorch, torch.compile (+ CUDA graphs), ONNX Runtime, TensorRT or OpenVINO.

`check_accelerator(name, target, options)` rejects impossible combinations before any weights load;
`make_backend(name, target, options)` gives the backend whose `runner(function)` runs a pure tensor
function (`livediff.networks`). An accelerator that cannot do what was asked raises
`AcceleratorError` or `ConfigError`: there is never a silent fallback to another backend. Nothing
here imports `livediff.pipelines`: the pipeline describes what it needs in a `BuildTarget`.

The backends come from a registry (`accelerators.registry`): each is declared by one module of
`accelerators/backends/` (its name, options, devices and precisions, refusals and factory), so this
file names none of them. `ACCELERATORS` is the registry's names, in order. Importing this package
loads no torch (the CLI lists the backends in `--help`); `AcceleratorOptions`, `BuildTarget` and the
other types of `accelerators.base` load it when first used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from livediff.accelerators import registry
from livediff.errors import ConfigError

if TYPE_CHECKING:
    from livediff.accelerators.base import AcceleratorOptions, Backend, BuildTarget, ResolutionRange, RowRange

    ACCELERATORS: tuple[str, ...]

__all__ = ["ACCELERATORS", "AcceleratorOptions", "Backend", "BuildTarget", "ResolutionRange", "RowRange",
           "check_accelerator", "make_backend"]

_BASE_NAMES = ("AcceleratorOptions", "Backend", "BuildTarget", "ResolutionRange", "RowRange")


def __getattr__(name: str):
    if name == "ACCELERATORS":
        return registry.names()
    if name in _BASE_NAMES:
        from livediff.accelerators import base

        return getattr(base, name)
    raise AttributeError(f"module 'livediff.accelerators' has no attribute {name!r}")


def _options(options: AcceleratorOptions | dict | None) -> AcceleratorOptions:
    from livediff.accelerators.base import AcceleratorOptions

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
    """Reject impossible combinations before any weights are loaded; returns the validated options.

    In this order: the name (`registry.get`), the options themselves, the pipeline size against a
    resolution range (backends that take one), options only another backend takes (that backend's
    `refuse_elsewhere`), then the backend's own `check` (device, precision, packages, option values).
    """
    spec = registry.get(name)
    options = _options(options)
    if "resolution" in spec.options:
        options.resolution_for(target.height, target.width)
    for other in registry.specs():
        if other.name != spec.name and other.refuse_elsewhere is not None:
            refusal = other.refuse_elsewhere(options, spec.name)
            if refusal:
                raise ConfigError(refusal)
    if spec.check is not None:
        spec.check(target, options)
    return options


def make_backend(name: str, target: BuildTarget, options: AcceleratorOptions | dict | None = None,
                 progress=None) -> Backend:
    """The backend behind `name` (checked first); `progress(network, message, done, total)` hears about builds."""
    options = check_accelerator(name, target, options)
    return registry.get(name).factory(target, options, progress)
