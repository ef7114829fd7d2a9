"""`identity`: the frame itself, as `tile` (for ControlNets trained on the picture, not on a map of it)."""
from __future__ import annotations

from livediff.pipelines.control_registry import PreprocessorSpec, register


def run(images, *, spec, network, given, index):
    return (images + 1) / 2


SPEC = register(PreprocessorSpec(name="identity", order=30, summary="the frame itself", runs_on="device",
                                 run=run))
