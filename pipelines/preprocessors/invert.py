"""`invert`: the frame's negative, 1 − frame (pixels in [0,1]), on the device: an example of adding
a preprocessor (docs/extending.md)."""
from __future__ import annotations

from livediff.pipelines.control_registry import PreprocessorSpec, register


def run(images, *, spec, network, given, index):
    """(F,3,H,W) frames in [-1,1] -> their negatives, (F,3,H,W) in [0,1], on the frames' device."""
    return (1 - images) / 2


SPEC = register(PreprocessorSpec(name="invert", order=70, summary="the frame's negative", runs_on="device",
                                 run=run))
