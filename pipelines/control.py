"""ControlNet on the stream: which ControlNets, how each frame becomes their control images, and
their live scales.

A ControlNet keeps the structure of the input (edges, the picture itself) in the output: it reads a
control image made from the frame and adds residuals to the UNet's skip connections. In a stream
batch the rows of one UNet call hold different frames (a row at stage s holds the frame that entered
s calls ago), so each frame's control images travel with it through the stages
(`StreamBatch.calls(carried=...)`): every row is conditioned on its own frame, never on the latest
frame's edges. Scales are per-session values read at every call (graph inputs on exported backends),
so changing one, or setting it to 0 to switch a ControlNet off, never rebuilds anything.

Preprocessors come from a registry (`pipelines.control_registry`): each is declared by one module of
`pipelines/preprocessors/` (its name, options, where it runs, the network it needs and its refusals);
the validation and `ControlImages` below read it and name none of them (the fields of `ControlNetSpec`
are the preprocessors' options). Among them (`livediff webcam --help` lists all): `canny` (OpenCV edges, thresholds adjustable; made on
the host from the frame's own pixels, before the networks' lock is taken, and uploaded as uint8), `tile` / `identity` (the frame itself), `none` (the caller passes
the control image with the frame: `pipe(frame, control=image)`), and `depth`, a depth estimator
given as `preprocessor_model` (hub id, folder or `random`) that runs on the pipeline's device, on all
the frames of a call at once, and `pose`, a human pose estimator (ViTPose) the same way, drawn as an
OpenPose skeleton (`pipelines.pose`). Importing this module loads no torch: the preprocessors load
what they use when they run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livediff.errors import ConfigError
from livediff.pipelines import checks, control_registry
from livediff.pipelines.preprocessors.pose import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import torch

    from livediff.pipelines.frames import HostFrames

MAX_CONTROLNETS = 4


def __getattr__(name: str):
    """`PREPROCESSORS` (every name) and `MODEL_PREPROCESSORS` (name → what its preprocessor_model is),
    read from the registry when asked; `canny` and `depth_map` from their preprocessors' modules."""
    if name in ("canny", "depth_map"):
        from livediff.pipelines.preprocessors import canny, depth

        return getattr(canny if name == "canny" else depth, name)
    if name == "PREPROCESSORS":
        return control_registry.names()
    if name == "MODEL_PREPROCESSORS":
        return {spec.name: spec.wanted for spec in control_registry.specs() if spec.network is not None}
    raise AttributeError(f"module 'livediff.pipelines.control' has no attribute {name!r}")


@dataclass(frozen=True)
class ControlNetSpec:
    """One ControlNet: `model` (hub id, folder, or `random` — random weights in the layout of the
    pipeline's UNet, for tests and speed), its preprocessor and initial scale."""

    model: str
    preprocessor: str = control_registry.DEFAULT
    scale: float = 1.0
    low_threshold: int = 100  # `canny`
    high_threshold: int = 200  # `canny`
    preprocessor_model: str | None = None  # `depth` / `pose`: its network (`PreprocessorSpec.network`)
    keypoint_threshold: float = DEFAULT_THRESHOLD  # `pose`: joints scored lower are not drawn

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"controlnet model {self.model!r} must be a hub id, a folder or 'random'")
        preprocessor = control_registry.get(self.preprocessor)
        checks.number("controlnet scale", self.scale, 0.0, 2.0)
        for spec in control_registry.specs():  # each validates the fields it owns, whichever is chosen
            if spec.check is not None:
                spec.check(self)
        self._check_preprocessor_model(preprocessor)

    def _check_preprocessor_model(self, preprocessor: control_registry.PreprocessorSpec) -> None:
        """A preprocessor that runs a network needs it named, and no other takes one."""
        if preprocessor.network is None:
            if self.preprocessor_model is not None:
                raise ConfigError(f"preprocessor_model is for preprocessors "
                                  f"{' and '.join(map(repr, control_registry.names(with_network=True)))}, "
                                  f"not {self.preprocessor!r}")
        elif not isinstance(self.preprocessor_model, str) or not self.preprocessor_model:
            raise ConfigError(f"preprocessor {self.preprocessor!r} needs preprocessor_model ({preprocessor.wanted}; "
                              f"a hub id, a folder or 'random'), not {self.preprocessor_model!r}")

    @property
    def preprocessor_network(self) -> tuple[str, str] | None:
        """(preprocessor, its network) to load, or None: what `ModelBundle.control_preprocessors`
        holds for this ControlNet (the kind matters: `random` is a DPT for depth, a ViTPose for pose)."""
        return (self.preprocessor, self.preprocessor_model) if self.preprocessor_model is not None else None

    @classmethod
    def parse(cls, value: Any) -> "ControlNetSpec":
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(model=value)
        if isinstance(value, dict):
            return checks.from_options("controlnet", cls, value)
        raise ConfigError(f"controlnet entry {value!r} must be a model name or a dict of options")


def parse_controlnets(value: Any) -> tuple[ControlNetSpec, ...]:
    """None / a spec / a list of specs → a validated tuple (at most `MAX_CONTROLNETS`)."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else [value]
    specs = tuple(ControlNetSpec.parse(item) for item in items)
    if len(specs) > MAX_CONTROLNETS:
        raise ConfigError(f"{len(specs)} ControlNets given; at most {MAX_CONTROLNETS} are supported")
    return specs


@dataclass(frozen=True)
class HostControl:
    """A frame's control inputs made on the host before the networks' lock is taken: the caller's
    control images (for `none` preprocessors) and, by ControlNet, what its `pixels` preprocessor made
    from the frame's pixels (uint8 (F,C,H,W) on the host, C 1 or 3; None for the other preprocessors)."""

    given: HostFrames | None
    made: tuple[torch.Tensor | None, ...]


class ControlImages:
    """Makes the control images of a frame batch for every ControlNet of a pipeline (`networks`:
    each ControlNet's preprocessor network or None, from `ModelBundle.control_preprocessors`), in two
    parts: `on_host` (the caller's thread, no device work) and the call (the device part)."""

    def __init__(self, specs: tuple[ControlNetSpec, ...], networks: tuple = ()):
        self.specs = specs
        self.networks = networks or (None,) * len(specs)
        self.preprocessors = tuple(control_registry.get(spec.preprocessor) for spec in specs)

    def on_host(self, frames: HostFrames, given: HostFrames | None) -> HostControl:
        """The host part: the `pixels` preprocessors run on the frames' host pixels."""
        pixels = frames.host_uint8() if any(p.runs_on == "pixels" for p in self.preprocessors) else None
        return HostControl(given, tuple(
            pre.run(pixels, spec=spec, network=None, given=None, index=i) if pre.runs_on == "pixels" else None
            for i, (pre, spec) in enumerate(zip(self.preprocessors, self.specs))))

    def __call__(self, images: torch.Tensor, host: HostControl) -> tuple[torch.Tensor, ...]:
        """images: (F,3,H,W) in [-1,1] on the device. Returns one (F,3,H,W) tensor in [0,1] per
        ControlNet, on the images' device and dtype; what the host made is uploaded and scaled there."""
        given = None if host.given is None else (host.given.to_model(images.device, images.dtype) + 1) / 2
        return tuple(
            pre.run(images, spec=spec, network=network, given=given, index=i) if made is None else
            _made_on_host(made, images)
            for i, (pre, spec, network, made) in enumerate(zip(self.preprocessors, self.specs, self.networks,
                                                               host.made)))


def _made_on_host(made: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """A `pixels` preprocessor's uint8 (F,C,H,W) → (F,3,H,W) in [0,1] in the images' dtype, on their device."""
    import torch

    from livediff.pipelines.frames import upload

    return (upload(made, images.device).to(torch.float32) / 255).to(images.dtype).expand(-1, 3, -1, -1)
