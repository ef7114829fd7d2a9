"""`compile`: torch.compile, then CUDA-graph replay of each fixed-shape call on CUDA (`accelerators.compiled`)."""
from __future__ import annotations

from livediff.accelerators.registry import DTYPES, BackendSpec, register


def check(target, options) -> None:
    from livediff.accelerators.compiled import check_compile_supported

    check_compile_supported(target.device, options.cuda_graphs)


def refuse_elsewhere(options, other: str) -> str | None:
    if options.cuda_graphs:
        return f"cuda_graphs=True is an option of accelerator 'compile', not {other!r}"
    return None


def make(target, options, progress):
    from livediff.accelerators.compiled import CompileBackend, check_compile_supported

    return CompileBackend(options.compile_mode, check_compile_supported(target.device, options.cuda_graphs), target)


SPEC = register(BackendSpec(
    name="compile", order=20, summary="torch.compile, CUDA graphs on CUDA", factory=make,
    # resolution: the pipeline's size must lie inside a range given (each size compiles its own graph)
    options=("cuda_graphs", "compile_mode", "resolution"),
    precisions={"cpu": DTYPES, "cuda": DTYPES, "mps": DTYPES},
    check=check, refuse_elsewhere=refuse_elsewhere,
    doctor=("cuda",),  # on a CPU the first call compiles for minutes
))
