"""Streaming diffusion pipelines: the stream maths, its optional parts (feature bank, similarity
filter, token merging) and the sessions that run them.

    from livediff import load_pipeline
    pipe = load_pipeline(model="tiny", mode="img2img", t_index_list=[32, 45], cfg_type="self",
                         width=512, height=512, device="cpu", dtype="float32")
    pipe.prepare(prompt="oil painting")
    out = pipe(frame)

Importing this package loads nothing heavy: `load_pipeline`, `shared_models` and `StreamConfig`
bring in torch and diffusers when first used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from livediff.errors import ConfigError, InputError, LivediffError, ModelNotAvailableError

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors (nothing imported at run time)
    from livediff.pipelines.config import StreamConfig
    from livediff.pipelines.loader import load_pipeline, shared_models

__all__ = ["load_pipeline", "shared_models", "StreamConfig", "LivediffError", "ConfigError", "InputError",
           "ModelNotAvailableError"]


def __getattr__(name: str):
    if name in ("load_pipeline", "shared_models"):
        from livediff.pipelines import loader

        return getattr(loader, name)
    if name == "StreamConfig":
        from livediff.pipelines.config import StreamConfig

        return StreamConfig
    raise AttributeError(f"module 'livediff.pipelines' has no attribute {name!r}")
