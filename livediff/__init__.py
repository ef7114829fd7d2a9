"""livediff: real-time streaming image and video-to-video diffusion.

    from livediff import load_pipeline
    pipe = load_pipeline(model="tiny", mode="img2img", t_index_list=[32, 45], cfg_type="self",
                         width=512, height=512, device="cpu", dtype="float32")
    pipe.prepare(prompt="oil painting")
    out = pipe(frame)

The repository's folders install under this namespace: `livediff.pipelines` (stream maths, bank,
sessions), `livediff.accelerators` (how a network runs), `livediff.app` (CLI, UI, batch video) and
`livediff.assets`. Dependencies run one way: `livediff.errors` → `livediff.networks` →
`accelerators` → `pipelines` → `app`. Importing this package loads nothing heavy: `load_pipeline`
imports torch and diffusers on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from livediff.errors import AcceleratorError, ConfigError, InputError, LivediffError, ModelNotAvailableError

if TYPE_CHECKING:  # the lazy name below, for type checkers and editors (nothing imported at run time)
    from livediff.pipelines.loader import load_pipeline

__all__ = ["load_pipeline", "LivediffError", "ConfigError", "InputError", "ModelNotAvailableError",
           "AcceleratorError"]


def __getattr__(name: str):
    if name == "load_pipeline":
        from livediff.pipelines import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'livediff' has no attribute {name!r}")
