"""The ControlNet preprocessors, by name: each one is declared by one module of
`livediff.pipelines.preprocessors` (a `PreprocessorSpec` passed to `register`), found there on first
use. Nothing else lists preprocessors: `ControlNetSpec` validation, `ControlImages`, the loading of
their networks (`control_models`), the CLI's help and the UI read this registry, so adding a
preprocessor is one new module plus its test (docs/extending.md).

Importing this module, and finding the preprocessors, loads no torch, OpenCV or model library: a
spec's functions import what they use when they run, so `livediff --help` lists them at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from livediff.errors import ConfigError
from livediff.registry import Registry

#: the package whose modules declare the preprocessors
PREPROCESSORS_PACKAGE = "livediff.pipelines.preprocessors"
#: the preprocessor of a ControlNet given without one
DEFAULT = "canny"
#: where a control image is made: on the pipeline's device (no host read); on the device with a read
#: back to the host (a sync per call, by design); on the host from the frame's own pixels, before the
#: networks' lock is taken (no device work, nothing read back); or by the caller (passed with the frame)
RUNS_ON = ("device", "host", "pixels", "caller")


@dataclass(frozen=True)
class PreprocessorSpec:
    """What one preprocessor is, what it takes and what it needs.

    name: what users pass as `preprocessor=` / `--control-preprocessor`.
    summary: a few words for the CLI's help, the UI and the docs (what the control image is).
    runs_on: "device", "host", "pixels" or "caller" (`RUNS_ON`).
    run: `run(images, *, spec, network, given, index) -> control images`: images are the frames of
        a call, (F,3,H,W) in [-1,1] on the pipeline's device; spec is the ControlNet's
        `ControlNetSpec` (its options), network the loaded `load_network(...)` (None without one),
        given the caller's control images ((F,3,H,W) in [0,1], or None) and index the ControlNet's
        position (for messages). Returns (F,3,H,W) in [0,1] on the images' device and dtype.
        A `pixels` preprocessor instead gets the frames' host pixels, (F,3,H,W) uint8 on the CPU,
        in the caller's thread, and returns uint8 (F,1,H,W) or (F,3,H,W) on the CPU (0..255; the
        pipeline uploads it as it is and scales it to [0,1] on the device).
    order: its place in every list shown to users (`names()`).
    options: the `ControlNetSpec` fields it reads (besides model and scale).
    check: `check(spec) -> None`, raising `ConfigError` with one sentence for a bad value of a field it
        owns. It runs for every ControlNet whatever its preprocessor (the fields exist on every spec,
        so a bad value is never silently carried).
    network: what `preprocessor_model` names for it, e.g. "a depth model" (None: it runs no network,
        and `preprocessor_model` is refused).
    network_example: a hub id of such a network (the help texts' example, the loaders' suggestion).
    load_network: `load_network(model, seed) -> module`: the network from a hub id, a folder or
        `random` (random weights for tests and speed); the pipeline moves it to its device and dtype.
    """

    name: str
    summary: str
    runs_on: str
    run: Callable[..., Any]
    order: int = 100
    options: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None
    network: str | None = None
    network_example: str | None = None
    load_network: Callable[[str, int], Any] | None = None

    def __post_init__(self):
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"preprocessor name {self.name!r} must be a word (letters, digits, - or _)")
        if self.runs_on not in RUNS_ON:
            raise ValueError(f"preprocessor {self.name!r}: runs_on {self.runs_on!r} is not one of {', '.join(RUNS_ON)}")
        if (self.network is None) != (self.load_network is None):
            raise ValueError(f"preprocessor {self.name!r}: network and load_network go together")

    @property
    def wanted(self) -> str | None:
        """What its `preprocessor_model` is, with an example: "a depth model, e.g. 'Intel/dpt-hybrid-midas'"."""
        if self.network is None:
            return None
        return f"{self.network}, e.g. {self.network_example!r}" if self.network_example else self.network


_registry: Registry[PreprocessorSpec] = Registry("preprocessor", PREPROCESSORS_PACKAGE,
                                                 lambda spec: spec.run.__module__)
#: add a preprocessor (its module calls this when imported); returns the spec
register = _registry.register
#: every preprocessor, in `order` (then by name)
specs = _registry.specs
find = _registry.find


def names(*, with_network: bool | None = None) -> tuple[str, ...]:
    """The preprocessors' names in order; `with_network` True/False: only those that run a network / not."""
    return tuple(s.name for s in specs() if with_network is None or (s.network is not None) == with_network)


def get(name: str) -> PreprocessorSpec:
    """The preprocessor called `name`; an unknown name is a `ConfigError` naming every preprocessor."""
    spec = find(name)
    if spec is None:
        raise ConfigError(f"control preprocessor {name!r} is not one of {', '.join(names())}")
    return spec
