"""ONNX export of the pure tensor functions (UNet, VAE encoder/decoder, TAESD, banked UNet).

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export based). The TorchScript exporter is
deprecated in torch 2.13 and records one trace, baking every shape-dependent Python branch of
the diffusers UNet (upsample-size forwarding, the contiguous() for >= 64 rows) into the graph;
torch.export records such branches as guards on symbolic sizes, so graphs with a dynamic rows axis
or resolution are correct by construction or fail at export, never at run time.

Axes: rows (axis 0) are always dynamic, because the stream pipeline calls the UNet with several
row counts (warm-up, CFG variants; see `BuildTarget.stream_rows`) and one graph should serve them all. Resolution
is static unless a range is requested; the spatial axes then move in steps the network can take
(64 pixels for the SD UNet, whose three 2x down-samplings must divide the latent size).
Weights go to an external data file only above 2 GB, the protobuf limit.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from livediff.accelerators.base import AcceleratorOptions, BuildTarget, ResolutionRange
from livediff.accelerators.engine_cache import EngineCache, EngineKey, weights_fingerprint
from livediff.errors import AcceleratorError, ConfigError
from livediff.networks import TensorFunction

log = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"
EXTERNAL_DATA_LIMIT = 2 * 1024 ** 3 - 64 * 1024 ** 2  # leave room for the graph itself under protobuf's 2 GiB
MAX_ROWS = 256
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export", "torch.fx")
PRECISIONS = {torch.float32: "float32", torch.float16: "float16"}
ProgressFn = Callable[[str, str, int, int | None], None]


def check_graph_names(function: TensorFunction, graph, inputs: list[str], outputs: list[str],
                      ordered: bool = True) -> None:
    """A graph must have its function's inputs and outputs, by name (and in order where the runner binds
    by position): runners name what they return by these names, so a stale or foreign graph is an
    error, never a reshuffle."""
    for kind, have, want in (("inputs", inputs, function.input_names), ("outputs", outputs, function.output_names)):
        if (tuple(have) != tuple(want)) if ordered else (sorted(have) != sorted(want)):
            missing = [n for n in want if n not in have][:3]
            raise AcceleratorError(f"the graph {graph} of {function.name} has {len(have)} {kind} that are not the "
                                   f"function's {len(want)} (first missing: {', '.join(missing) or 'none'}, order "
                                   f"differs otherwise); remove it with `livediff engines clear` and rebuild")


def exporter_version(opset: int) -> str:
    return f"torch {torch.__version__.split('+')[0]} dynamo opset {opset}"


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def check_resolution(function: TensorFunction, resolution: ResolutionRange) -> None:
    """A dynamic range must move in the network's size steps (else export would have to specialise)."""
    if not resolution.dynamic:
        return
    step = function.spatial_multiple
    bounds = (resolution.min_height, resolution.min_width, resolution.max_height, resolution.max_width)
    if any(b % step for b in bounds):
        raise ConfigError(f"a dynamic resolution range for {function.name} needs bounds that are multiples of "
                          f"{step} pixels; got {resolution.describe()}")


def _spatial_dim(name: str, low: int, high: int):
    """A torch.export Dim over [low, high] size steps, or None for an axis the range keeps fixed."""
    from torch.export import Dim

    return Dim(name, min=low, max=high) if low != high else None


def dynamic_shapes(function: TensorFunction, resolution: ResolutionRange) -> tuple[dict, ...]:
    """torch.export dynamic shapes: rows on axis 0 of every input, spatial axes when `resolution` is a range."""
    from torch.export import Dim

    check_resolution(function, resolution)
    rows = Dim("rows", min=1, max=MAX_ROWS)
    spatial = function.spatial_axes() if resolution.dynamic else {}
    step = function.spatial_multiple
    height = _spatial_dim("height_steps", resolution.min_height // step, resolution.max_height // step)
    width = _spatial_dim("width_steps", resolution.min_width // step, resolution.max_width // step)
    shapes = []
    for name in function.input_names:
        axes = {0: rows}
        if name in spatial:
            h_axis, w_axis, pixels_per_element = spatial[name]
            for axis, dim in ((h_axis, height), (w_axis, width)):
                if dim is not None:
                    axes[axis] = (step // pixels_per_element) * dim
        shapes.append(axes)
    return function.grouped_like_forward(shapes)


@contextmanager
def _quiet_exporter_logs():
    """The exporter logs every graph rewrite at INFO; a user building engines cannot act on any of it."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(function: TensorFunction, folder: Path, *, height: int, width: int, resolution: ResolutionRange,
                dtype: torch.dtype, device: torch.device | str, opset: int, rows: int = 2) -> Path:
    """Export `function` to `folder/model.onnx` (+ `model.onnx.data` above 2 GB) and check the graph.

    `height`/`width` size the example inputs; `resolution` says which sizes the graph accepts.
    The example has at least 2 rows: torch.export specialises sizes 0 and 1, which would pin the
    rows axis.
    """
    import onnx

    path = Path(folder) / GRAPH_FILE
    example = function.example_inputs(max(2, rows), height, width, dtype, device)
    external = parameter_bytes(function) > EXTERNAL_DATA_LIMIT
    try:
        with warnings.catch_warnings(), torch.no_grad(), _quiet_exporter_logs():
            warnings.simplefilter("ignore")
            torch.onnx.export(function, example, str(path), input_names=list(function.input_names),
                              output_names=list(function.output_names), opset_version=opset, dynamo=True,
                              external_data=external, dynamic_shapes=dynamic_shapes(function, resolution),
                              verbose=False)
    except ConfigError:
        raise
    except Exception as exc:  # torch.export / onnxscript raise many types; the user needs network and cause
        raise AcceleratorError(f"ONNX export of {function.name} ({resolution.describe()}, {dtype}) failed: "
                               f"{exc}") from exc
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise AcceleratorError(f"the exported ONNX graph of {function.name} is invalid: {exc}") from exc
    log.debug("exported %s to %s (%s external data)", function.name, path, "with" if external else "without")
    return path


def onnx_key(function: TensorFunction, target: BuildTarget, resolution: ResolutionRange, precision: str,
             opset: int) -> EngineKey:
    return EngineKey(kind="onnx", network=function.name, model=target.model, loras=tuple(target.loras),
                     weights=weights_fingerprint(function), precision=precision, builder=exporter_version(opset),
                     resolution=(resolution.min_height, resolution.min_width, resolution.max_height,
                                 resolution.max_width), bank=function.variant())


class GraphExporter:
    """ONNX graphs of a pipeline's functions through the `EngineCache`: exported once, then reused.

    `progress(network, message, done, total)` hears about exports (for `livediff build-engines`).
    """

    def __init__(self, target: BuildTarget, options: AcceleratorOptions, progress: ProgressFn | None = None):
        self.target = target
        self.options = options
        self.progress = progress
        self.device = target.device
        self.dtype = target.dtype
        if self.dtype not in PRECISIONS:
            raise ConfigError(f"ONNX graphs are exported in float32 or float16, not {self.dtype}")
        self.cache = EngineCache(options.cache_dir)
        self.resolution = options.resolution_for(target.height, target.width)
        self._verified: dict[str, Path] = {}

    def _report(self, function: TensorFunction, message: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(function.name, message, done, total)

    def artifact(self, function: TensorFunction) -> Path:
        """The cached ONNX graph of `function`, exported now when missing or unusable."""
        key = onnx_key(function, self.target, self.resolution, PRECISIONS[self.dtype], self.options.opset)

        def build(folder: Path) -> None:
            self._report(function, "exporting ONNX", 0, None)
            export_onnx(function, folder, height=self.target.height, width=self.target.width,
                        resolution=self.resolution, dtype=self.dtype, device=self.device, opset=self.options.opset,
                        rows=self.target.rows_for(function).opt)

        digest = key.digest()
        if digest not in self._verified:  # hash the files once per process, not at every stream rebuild
            entry = self.cache.get_or_build(key, build, allow_build=self.options.build)
            self._verified[digest] = entry.file(GRAPH_FILE)
        self._report(function, "ONNX graph ready", 1, 1)
        return self._verified[digest]
