"""The backends, by name: each one is declared by one module of `livediff.accelerators.backends`
(a `BackendSpec` passed to `register`), found there on first use. Nothing else lists backends:
`accelerators.check_accelerator` / `make_backend`, the CLI's help, `livediff doctor`, the UI's
batch limits and the causal pipeline's refusals all read this registry, so adding a backend is one
new module plus its test (docs/extending.md).

Importing this module, and finding the backends, loads no torch: a spec names its checks and its
factory as functions that import the backend's own module when they run, so `livediff --help` can
list the backends at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from livediff.errors import ConfigError
from livediff.registry import Registry

if TYPE_CHECKING:
    from livediff.accelerators.base import AcceleratorOptions, Backend, BuildTarget

#: the package whose modules declare the backends
BACKENDS_PACKAGE = "livediff.accelerators.backends"
#: the torch device types and precisions a spec may name in `precisions`
DEVICE_TYPES = ("cpu", "cuda", "mps")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class BackendSpec:
    """What one backend is, what it takes and what it can run.

    name: what users pass as `accelerator=` / `--accelerator`.
    summary: a few words for the CLI's help and the docs (what runs the networks, where).
    factory: `(target, options, progress) -> Backend`, called once the options are checked;
        `progress(network, message, done, total)` hears about builds (may be None).
    order: the backend's place in every list shown to users (`names()`, `ACCELERATORS`).
    options: the `AcceleratorOptions` fields that apply to it; with "resolution" the pipeline's size
        must lie inside a given resolution range (checked before `check`).
    precisions: torch device type → the precisions (dtype names) it runs there. Declared, and kept
        honest by the backend's test: every pair outside it is refused by `check`.
    modes: the pipeline modes it runs (None: every mode, "causal-video" included).
    check: `(target, options) -> None`, raising `ConfigError` / `AcceleratorError` with one sentence
        when this backend cannot do what was asked (device, precision, missing package, option values).
    refuse_elsewhere: `(options, other_name) -> sentence or None`: the refusal when options only this
        backend takes are given to another backend (e.g. "cuda_graphs=True is an option of accelerator
        'compile', not 'onnxruntime'"). Never a silent no-op.
    builds_ahead: `livediff build-engines` can export/build its graphs or engines ahead of time.
    fixed_rows: its engines are built for a fixed range of rows, so the UI batches one session per
        network run unless asked for more (`--max-batch`).
    doctor: device types ("cpu", "cuda") on which `livediff doctor` measures it by default.
    doctor_if_installed: a Python package without which `livediff doctor` leaves it out of its
        default list (it can still be named with --backends).
    """

    name: str
    summary: str
    factory: Callable[["BuildTarget", "AcceleratorOptions", Any], "Backend"]
    order: int = 100
    options: tuple[str, ...] = ()
    precisions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    modes: tuple[str, ...] | None = None
    check: Callable[["BuildTarget", "AcceleratorOptions"], None] | None = None
    refuse_elsewhere: Callable[["AcceleratorOptions", str], "str | None"] | None = None
    builds_ahead: bool = False
    fixed_rows: bool = False
    doctor: tuple[str, ...] = ()
    doctor_if_installed: str | None = None

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"backend name {self.name!r} must be a word (letters, digits, - or _)")
        unknown = [d for d in (*self.precisions, *self.doctor) if d not in DEVICE_TYPES]
        unknown += [t for dtypes in self.precisions.values() for t in dtypes if t not in DTYPES]
        if unknown:
            raise ValueError(f"backend {self.name!r} names unknown device types or precisions {unknown}; "
                             f"devices: {', '.join(DEVICE_TYPES)}; precisions: {', '.join(DTYPES)}")

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.precisions)

    def runs(self, mode: str) -> bool:
        return self.modes is None or mode in self.modes


_registry: Registry[BackendSpec] = Registry("backend", BACKENDS_PACKAGE, lambda spec: spec.factory.__module__)
#: add a backend (its module calls this when imported); returns the spec
register = _registry.register
#: every backend, in `order` (then by name)
specs = _registry.specs


def names(mode: str | None = None) -> tuple[str, ...]:
    """The backends' names in order; with `mode`, only those that run that pipeline mode."""
    return tuple(s.name for s in specs() if mode is None or s.runs(mode))


def get(name: str) -> BackendSpec:
    """The backend called `name`; an unknown name is a `ConfigError` naming every backend."""
    spec = _registry.find(name)
    if spec is None:
        raise ConfigError(f"accelerator {name!r} is not one of {', '.join(names())}")
    return spec

