"""`none`: the caller passes the control image with the frame, `pipe(frame, control=image)`."""
from __future__ import annotations

from livediff.errors import InputError
from livediff.pipelines.control_registry import PreprocessorSpec, register


def run(images, *, spec, network, given, index):
    if given is None:
        raise InputError(f"ControlNet {index} ({spec.model}) has preprocessor 'none': pass its control "
                         f"image with the frame, pipe(frame, control=image)")
    return given


SPEC = register(PreprocessorSpec(name="none", order=40, summary="given with each frame", runs_on="caller", run=run))
