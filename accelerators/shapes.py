"""How many rows the stream pipeline puts through the UNet in one call.

Static-shape backends (TensorRT profiles, CUDA graphs) must know this in advance. With n stages,
F frames per call and the CFG mode, the pipeline calls the UNet with:

* steady state: n·F rows; 2·n·F with `full` CFG; n·F + F with `initialize` (the real negative of
  the entering frames);
* warm-up (first call after a reset): F rows per stage, 2·F for the first stage with `full` or
  `initialize`;
* a guidance scale <= 1 turns the extra CFG rows off, so n·F is always possible.

So every call lies in [F, max] with max the steady count; the steady count is what is optimised.
"""
from __future__ import annotations

from dataclasses import dataclass

from livediff.errors import ConfigError
from livediff.pipelines.rcfg import CFG_TYPES


@dataclass(frozen=True)
class RowPlan:
    """Row counts of UNet calls: every call has min <= rows <= max; `opt` is the steady state."""

    min: int
    opt: int
    max: int

    @classmethod
    def for_stream(cls, steps: int, frames: int, cfg_type: str) -> "RowPlan":
        if cfg_type not in CFG_TYPES:
            raise ConfigError(f"cfg_type {cfg_type!r} is not one of {', '.join(CFG_TYPES)}")
        if steps < 1 or frames < 1:
            raise ConfigError(f"steps {steps} and frames {frames} must both be at least 1")
        steady = steps * frames
        if cfg_type == "full":
            steady *= 2
        elif cfg_type == "initialize":
            steady += frames
        return cls(min=frames, opt=steady, max=steady)

    @classmethod
    def for_config(cls, config) -> "RowPlan":
        return cls.for_stream(len(config.t_index_list), config.frame_buffer_size, config.cfg_type)

    def contains(self, rows: int) -> bool:
        return self.min <= rows <= self.max

    def describe(self) -> str:
        return f"{self.min}..{self.max} (steady {self.opt})"


def rows_for(function, config) -> RowPlan:
    """Rows of `function`'s calls: the stream plan for UNets, one row per frame for the VAE."""
    if getattr(function, "stream_rows", True):
        return RowPlan.for_config(config)
    frames = config.frame_buffer_size
    return RowPlan(frames, frames, frames)
