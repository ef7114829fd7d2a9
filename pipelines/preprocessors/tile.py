"""`tile`: the frame itself, for tile (detail / upscale) ControlNets; on the device."""
from __future__ import annotations

from livediff.pipelines.control_registry import PreprocessorSpec, register


def run(images, *, spec, network, given, index):
    return (images + 1) / 2


SPEC = register(PreprocessorSpec(name="tile", order=20, summary="the frame itself", runs_on="device", run=run))
