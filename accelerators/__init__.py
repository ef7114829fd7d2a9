"""How the networks run: eager PyTorch, torch.compile, ONNX Runtime or TensorRT.

`build_runners(name, models, ...)` is the one entry point; an accelerator that cannot do what was
asked raises `AcceleratorError` — there is never a silent fallback to another backend.
"""
from __future__ import annotations

from accelerators.base import Runners
from pipelines.errors import ConfigError

ACCELERATORS = ("eager",)


def build_runners(name: str, models, **options) -> Runners:
    if name == "eager":
        from accelerators.eager import eager_runners

        return eager_runners(models)
    raise ConfigError(f"accelerator {name!r} is not one of {', '.join(ACCELERATORS)}")
