"""What a backend is told: the function to run (`livediff.networks`), the target it builds for
(device, precision, size, rows per call, model identity) and the options beyond the stream.

Backends know nothing of streams: the pipeline works out how many rows its calls have
(`pipelines.stream.stream_rows`) and hands the range over in a `BuildTarget`, so static-shape
backends (TensorRT profiles, CUDA graphs) can prepare for every call in advance.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from livediff.errors import ConfigError

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
OPENVINO_DEVICES = ("CPU", "GPU", "NPU", "AUTO")
CACHE_ENV = "LIVEDIFF_CACHE_DIR"


class Backend(Protocol):
    """Makes a runner for a pure tensor function (`livediff.networks.TensorFunction`)."""

    name: str
    #: True when every new row count costs a new compiled graph or model (compile, openvino): runs
    #: shared by several sessions are then padded to a few row counts (`pipelines.batching`)
    static_rows: bool

    def runner(self, function) -> Callable[..., Any]: ...


@dataclass(frozen=True)
class RowRange:
    """Row counts of a function's calls: every call has min <= rows <= max; `opt` is the steady state."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(f"row range {self.min}..{self.max} (steady {self.opt}) needs 1 <= min <= steady <= max")

    def contains(self, rows: int) -> bool:
        return self.min <= rows <= self.max

    def describe(self) -> str:
        return f"{self.min}..{self.max} (steady {self.opt})"


@dataclass(frozen=True)
class BuildTarget:
    """Everything a backend builds for besides the function itself.

    stream_rows: rows of the calls of functions whose rows follow the stream batch (the UNets);
        frame_rows: rows of the per-frame functions (the VAE), one per frame of a call.
    sessions: how many sessions' rows one call may carry (`pipelines.batching`): the most rows
        widen to that many times one session's.
    model, loras: identity of the weights, part of the cache keys of exported graphs and engines.
    """

    device: torch.device
    dtype: torch.dtype
    height: int
    width: int
    stream_rows: RowRange
    frame_rows: int
    model: str = ""
    loras: tuple[str, ...] = ()
    sessions: int = 1

    def rows_for(self, function) -> RowRange:
        rows = self._session_rows(function)
        return RowRange(rows.min, rows.opt, rows.max * self.sessions)

    def steady_rows_for(self, function) -> tuple[int, ...]:
        """Row counts of the steady calls: one session's, and every padded count of a run shared by
        2..`sessions` sessions (`padded_rows` of one session's most rows)."""
        rows = self._session_rows(function)
        shared = {padded_rows(k * rows.max, rows.max) for k in range(2, self.sessions + 1)}
        return tuple(sorted({rows.opt} | shared))

    def _session_rows(self, function) -> RowRange:
        return (self.stream_rows if getattr(function, "stream_rows", True)
                else RowRange(self.frame_rows, self.frame_rows, self.frame_rows))


def padded_rows(rows: int, unit: int) -> int:
    """Rows of a shared run on a backend that compiles per row count: `unit` (one session's largest
    call) times the next power of two, so 1, 2, 4, 8 sessions' worth of rows need four compiled
    shapes, not one per mix of sessions."""
    if unit <= 0:
        return rows
    buckets = 1
    while unit * buckets < rows:
        buckets *= 2
    return unit * buckets


def default_cache_dir() -> Path:
    """Where exported graphs and engines live: $LIVEDIFF_CACHE_DIR, else ~/.cache/livediff/engines."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "livediff" / "engines"


@dataclass(frozen=True)
class ResolutionRange:
    """Pixel sizes a graph or engine accepts; min == max is a static resolution."""

    min_height: int
    min_width: int
    max_height: int
    max_width: int

    @classmethod
    def static(cls, height: int, width: int) -> "ResolutionRange":
        return cls(height, width, height, width)

    @property
    def dynamic(self) -> bool:
        return (self.min_height, self.min_width) != (self.max_height, self.max_width)

    def contains(self, height: int, width: int) -> bool:
        return self.min_height <= height <= self.max_height and self.min_width <= width <= self.max_width

    def describe(self) -> str:
        if not self.dynamic:
            return f"{self.max_width}x{self.max_height}"
        return f"{self.min_width}x{self.min_height}..{self.max_width}x{self.max_height}"


@dataclass
class AcceleratorOptions:
    """Backend settings beyond the stream config.

    cuda_graphs: `compile` only; None means on when the device is CUDA. Requesting True on CPU is
        an error, not a silent no-op.
    compile_mode: torch.compile mode; modes that bring their own CUDA graphs are refused because
        `compile` captures its own (two capture layers would fight over the static buffers).
    cache_dir: exported ONNX graphs and TensorRT engines (default `default_cache_dir()`).
    resolution: (min_height, min_width, max_height, max_width) for a graph/engine that accepts a
        range of sizes; None exports the pipeline's own resolution only (static, the fastest).
    opset: ONNX opset of exported graphs (>= 17: LayerNormalization is a single op from 17 on).
    build: when False a missing engine or graph is an error instead of being built on the spot.
    workspace_gb: TensorRT builder workspace limit (None: TensorRT's default, the whole GPU).
    openvino_device: `openvino` only: the OpenVINO device (CPU, GPU, NPU, AUTO, or e.g. GPU.1).
    weights: `openvino` only: None (the model's float32 weights) or "int8" (weights compressed by NNCF;
        changes the numbers, so never on by default).
    """

    cuda_graphs: bool | None = None
    compile_mode: str = "default"
    cache_dir: str | Path | None = None
    resolution: ResolutionRange | tuple[int, int, int, int] | None = None
    opset: int = 18
    build: bool = True
    workspace_gb: float | None = None
    openvino_device: str = "CPU"
    weights: str | None = None

    def __post_init__(self):
        if not isinstance(self.cuda_graphs, (bool, type(None))):
            raise ConfigError(f"cuda_graphs {self.cuda_graphs!r} must be True, False or None (on with CUDA)")
        if not isinstance(self.build, bool):
            raise ConfigError(f"build {self.build!r} must be True (build missing engines) or False (refuse)")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"compile_mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)} "
                              f"(CUDA graphs are set with cuda_graphs=True/False)")
        if not isinstance(self.opset, int) or isinstance(self.opset, bool) or not 17 <= self.opset <= 23:
            raise ConfigError(f"opset {self.opset!r} is outside 17..23")
        if self.resolution is not None and not isinstance(self.resolution, ResolutionRange):
            self.resolution = _resolution_range(self.resolution)
        if not isinstance(self.openvino_device, str) or self.openvino_device.split(".")[0] not in OPENVINO_DEVICES:
            raise ConfigError(f"openvino_device {self.openvino_device!r} is not one of CPU, GPU, NPU, AUTO "
                              f"(optionally with an index, e.g. GPU.1)")
        if self.weights not in (None, "int8"):
            raise ConfigError(f"weights {self.weights!r} is not None or 'int8'")
        if self.workspace_gb is not None and (isinstance(self.workspace_gb, bool)
                                              or not isinstance(self.workspace_gb, (int, float))
                                              or not 0 < self.workspace_gb < math.inf):
            raise ConfigError(f"workspace_gb {self.workspace_gb!r} must be None or a positive number of GiB")
        if self.cache_dir is not None and (not isinstance(self.cache_dir, (str, os.PathLike)) or not str(self.cache_dir)):
            raise ConfigError(f"cache_dir {self.cache_dir!r} must be a folder path")
        given = self.cache_dir is not None
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            source = "cache_dir" if given else f"${CACHE_ENV}"
            raise ConfigError(f"{source} {str(self.cache_dir)!r} is a file; the engine cache needs a folder there")

    def resolution_for(self, height: int, width: int) -> ResolutionRange:
        """The range to build for a pipeline at height x width; it must contain that size."""
        if self.resolution is None:
            return ResolutionRange.static(height, width)
        if not self.resolution.contains(height, width):
            raise ConfigError(f"pipeline size {width}x{height} is outside the accelerator resolution range "
                              f"{self.resolution.describe()}")
        return self.resolution


def _resolution_range(values) -> ResolutionRange:
    try:
        min_h, min_w, max_h, max_w = (int(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"resolution {values!r} must be (min_height, min_width, max_height, max_width)") from None
    for v in (min_h, min_w, max_h, max_w):
        if v % 8 or not 64 <= v <= 2048:
            raise ConfigError(f"resolution bound {v} must be a multiple of 8 between 64 and 2048")
    if min_h > max_h or min_w > max_w:
        raise ConfigError(f"resolution {values!r}: minimum {min_w}x{min_h} exceeds maximum {max_w}x{max_h}")
    return ResolutionRange(min_h, min_w, max_h, max_w)
