"""`canny`: the frame's edges by OpenCV's Canny detector, thresholds `low_threshold` / `high_threshold`
(0..255). A host step on the frame's own pixels (`runs_on="pixels"`): it runs in the caller's thread
before the networks' lock is taken, reads nothing back from the device, and its edges go up as uint8."""
from __future__ import annotations

from livediff.errors import ConfigError
from livediff.pipelines.control_registry import PreprocessorSpec, register


def canny(pixels, low: int, high: int):
    """(B,3,H,W) uint8 pixels on the host → their Canny edges, (B,1,H,W) uint8 0 or 255 on the host."""
    import cv2
    import numpy as np
    import torch

    edges = [cv2.Canny(np.ascontiguousarray(p.permute(1, 2, 0).numpy()), low, high) for p in pixels]
    return torch.from_numpy(np.stack(edges)).unsqueeze(1)


def check(spec) -> None:
    for name in ("low_threshold", "high_threshold"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise ConfigError(f"canny {name} {value!r} must be an integer in 0..255")
    if spec.low_threshold > spec.high_threshold:
        raise ConfigError(f"canny low_threshold {spec.low_threshold} is above high_threshold {spec.high_threshold}")


def run(pixels, *, spec, network, given, index):
    return canny(pixels, spec.low_threshold, spec.high_threshold)


SPEC = register(PreprocessorSpec(
    name="canny", order=10, summary="OpenCV edges", runs_on="pixels", run=run,
    options=("low_threshold", "high_threshold"), check=check,
))
