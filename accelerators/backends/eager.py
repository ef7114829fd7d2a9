"""`eager`: PyTorch as it is (`accelerators.eager`), the reference every other backend is compared with."""
from __future__ import annotations

from livediff.accelerators.registry import DTYPES, BackendSpec, register


def make(target, options, progress):
    from livediff.accelerators.eager import EagerBackend

    return EagerBackend()


SPEC = register(BackendSpec(
    name="eager", order=10, summary="PyTorch as it is, the reference", factory=make,
    precisions={"cpu": DTYPES, "cuda": DTYPES, "mps": DTYPES},
    doctor=("cpu", "cuda"),
))
