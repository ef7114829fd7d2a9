"""ControlNet on the stream: which ControlNets, how each frame becomes their control images, and
their live scales.

A ControlNet keeps the structure of the input (edges, the picture itself) in the output: it reads a
control image made from the frame and adds residuals to the UNet's skip connections. In a stream
batch the rows of one UNet call hold different frames (a row at stage s holds the frame that entered
s calls ago), so each frame's control images travel with it through the stages
(`StreamBatch.calls(carried=...)`): every row is conditioned on its own frame, never on the latest
frame's edges. Scales are per-session values read at every call (graph inputs on exported backends),
so changing one, or setting it to 0 to switch a ControlNet off, never rebuilds anything.

Preprocessors: `canny` (OpenCV edges, thresholds adjustable; a host step by design: it reads the
frame back), `tile` / `identity` (the frame itself), `none` (the caller passes the control image
with the frame: `pipe(frame, control=image)`), and `depth`, a depth estimator given as
`preprocessor_model` (hub id, folder or `random`) that runs on the pipeline's device, on all the
frames of a call at once, and `pose`, a human pose estimator (ViTPose) the same way, drawn as an
OpenPose skeleton (`pipelines.pose`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from livediff.errors import ConfigError, InputError
from livediff.pipelines import checks
from livediff.pipelines.pose import DEFAULT_THRESHOLD, pose_map

PREPROCESSORS = ("canny", "tile", "identity", "none", "depth", "pose")
#: preprocessors that run a network, given as `preprocessor_model`, and what that network is
MODEL_PREPROCESSORS = {"depth": "a depth model, e.g. 'Intel/dpt-hybrid-midas'",
                       "pose": "a ViTPose model, e.g. 'usyd-community/vitpose-base-simple'"}
MAX_CONTROLNETS = 4


@dataclass(frozen=True)
class ControlNetSpec:
    """One ControlNet: `model` (hub id, folder, or `random` — random weights in the layout of the
    pipeline's UNet, for tests and speed), its preprocessor and initial scale."""

    model: str
    preprocessor: str = "canny"
    scale: float = 1.0
    low_threshold: int = 100
    high_threshold: int = 200
    preprocessor_model: str | None = None  # `depth` / `pose`: its network (see MODEL_PREPROCESSORS)
    keypoint_threshold: float = DEFAULT_THRESHOLD  # `pose`: joints scored lower are not drawn

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f"controlnet model {self.model!r} must be a hub id, a folder or 'random'")
        if self.preprocessor not in PREPROCESSORS:
            raise ConfigError(f"control preprocessor {self.preprocessor!r} is not one of {', '.join(PREPROCESSORS)}")
        checks.number("controlnet scale", self.scale, 0.0, 2.0)
        for name in ("low_threshold", "high_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
                raise ConfigError(f"canny {name} {value!r} must be an integer in 0..255")
        checks.number("pose keypoint_threshold", self.keypoint_threshold, 0.0, 1.0)
        self._check_preprocessor_model()
        if self.low_threshold > self.high_threshold:
            raise ConfigError(f"canny low_threshold {self.low_threshold} is above high_threshold {self.high_threshold}")

    def _check_preprocessor_model(self) -> None:
        """A preprocessor that runs a network needs it named, and no other takes one."""
        wanted = MODEL_PREPROCESSORS.get(self.preprocessor)
        if not wanted:
            if self.preprocessor_model is not None:
                raise ConfigError(f"preprocessor_model is for preprocessors "
                                  f"{' and '.join(map(repr, MODEL_PREPROCESSORS))}, not {self.preprocessor!r}")
        elif not isinstance(self.preprocessor_model, str) or not self.preprocessor_model:
            raise ConfigError(f"preprocessor {self.preprocessor!r} needs preprocessor_model ({wanted}; a hub id, "
                              f"a folder or 'random'), not {self.preprocessor_model!r}")

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


def canny(images: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """(B,3,H,W) images in [-1,1] → their Canny edges as (B,3,H,W) in [0,1], on the images' device."""
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    edges = [cv2.Canny(np.ascontiguousarray(p.permute(1, 2, 0).numpy()), low, high) for p in pixels]
    stacked = torch.from_numpy(np.stack(edges)).unsqueeze(1).expand(-1, 3, -1, -1)
    return (stacked.to(torch.float32) / 255).to(images.device, images.dtype)


def depth_map(model, images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) images in [-1,1] → the depth model's estimate, min–max scaled per image to [0,1] and
    repeated on 3 channels, at the images' size. The model sees a square of its own size (DPT's
    position embeddings are for `image_size`²), as its image processors resize to; [-1,1] is already
    DPT's input normalisation (mean 0.5, std 0.5)."""
    size = getattr(model.config, "image_size", 384)
    square = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    depth = model(pixel_values=square.to(model.dtype)).predicted_depth.unsqueeze(1)
    depth = F.interpolate(depth, size=images.shape[-2:], mode="bicubic", align_corners=False)
    low = depth.amin(dim=(2, 3), keepdim=True)
    high = depth.amax(dim=(2, 3), keepdim=True)
    scaled = (depth - low) / (high - low).clamp_min(torch.finfo(depth.dtype).tiny)
    return scaled.expand(-1, 3, -1, -1).to(images.dtype)


class ControlImages:
    """Makes the control images of a frame batch for every ControlNet of a pipeline (`networks`:
    each ControlNet's preprocessor network or None, from `ModelBundle.control_preprocessors`)."""

    def __init__(self, specs: tuple[ControlNetSpec, ...], networks: tuple = ()):
        self.specs = specs
        self.networks = networks or (None,) * len(specs)

    def __call__(self, images: torch.Tensor, given: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """images: (F,3,H,W) in [-1,1]; given: the caller's control images (F,3,H,W) in [0,1] for
        `none` preprocessors. Returns one (F,3,H,W) tensor in [0,1] per ControlNet."""
        out = []
        for i, spec in enumerate(self.specs):
            if spec.preprocessor == "canny":
                out.append(canny(images, spec.low_threshold, spec.high_threshold))
            elif spec.preprocessor in ("tile", "identity"):
                out.append((images + 1) / 2)
            elif spec.preprocessor == "depth":
                with torch.no_grad():
                    out.append(depth_map(self.networks[i], images))
            elif spec.preprocessor == "pose":
                with torch.no_grad():
                    out.append(pose_map(self.networks[i], images, spec.keypoint_threshold))
            else:
                if given is None:
                    raise InputError(f"ControlNet {i} ({spec.model}) has preprocessor 'none': pass its control "
                                     f"image with the frame, pipe(frame, control=image)")
                out.append(given)
        return tuple(out)
