"""`canny`: the frame's edges by OpenCV's Canny detector, thresholds `low_threshold` / `high_threshold`
(0..255). A host step by design: it reads the frames back (one host sync per call)."""
from __future__ import annotations

from livediff.errors import ConfigError
from livediff.pipelines.control_registry import PreprocessorSpec, register


def canny(images, low: int, high: int):
    """(B,3,H,W) images in [-1,1] → their Canny edges as (B,3,H,W) in [0,1], on the images' device."""
    import cv2
    import numpy as np
    import torch

    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    edges = [cv2.Canny(np.ascontiguousarray(p.permute(1, 2, 0).numpy()), low, high) for p in pixels]
    stacked = torch.from_numpy(np.stack(edges)).unsqueeze(1).expand(-1, 3, -1, -1)
    return (stacked.to(torch.float32) / 255).to(images.device, images.dtype)


def check(spec) -> None:
    for name in ("low_threshold", "high_threshold"):
        value = getattr(spec, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
            raise ConfigError(f"canny {name} {value!r} must be an integer in 0..255")
    if spec.low_threshold > spec.high_threshold:
        raise ConfigError(f"canny low_threshold {spec.low_threshold} is above high_threshold {spec.high_threshold}")


def run(images, *, spec, network, given, index):
    return canny(images, spec.low_threshold, spec.high_threshold)


SPEC = register(PreprocessorSpec(
    name="canny", order=10, summary="OpenCV edges", runs_on="host", run=run,
    options=("low_threshold", "high_threshold"), check=check,
))
