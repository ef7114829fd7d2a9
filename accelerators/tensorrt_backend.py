"""`tensorrt`: ONNX graph → TensorRT engine (Python API), cached by a key of everything that changes it.

Precision: the graph is exported from the fp16 model on CUDA and built as a *strongly typed*
network, so the engine runs the precisions the graph states. TensorRT 11 removed the weakly typed
`BuilderFlag.FP16` route; strong typing works the same on 10.x and 11.x.

Rows: one engine per network with one optimisation profile spanning every row count the pipeline
can send (`BuildTarget.stream_rows`: warm-up F .. steady state, optimised for the steady state), and the requested
resolution range (optimised for the pipeline's own size). A call outside the profile (e.g. the CFG
mode changed live to one needing more rows) is an error naming the profile, never a fallback.

The builder's timing cache is kept on disk per TensorRT version and GPU, so rebuilding for another
resolution or LoRA reuses the kernel timings. `tensorrt` is imported lazily: everything else in
livediff works without it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch

from livediff.accelerators.base import AcceleratorOptions, BuildTarget, ResolutionRange, RowRange
from livediff.accelerators.engine_cache import EngineKey, loaded_weights_fingerprint
from livediff.accelerators.onnx_export import GraphExporter, ProgressFn, check_graph_names
from livediff.errors import AcceleratorError, ConfigError
from livediff.network_outputs import NetworkOutputs
from livediff.networks import TensorFunction

log = logging.getLogger(__name__)

ENGINE_FILE = "model.plan"
PRECISIONS = {torch.float16: "float16", torch.float32: "float32"}
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]
BuildProgressFn = Callable[[str, int, int | None], None]


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise AcceleratorError("accelerator 'tensorrt' needs TensorRT: install livediff[tensorrt] on a machine "
                               "with CUDA") from exc
    return tensorrt


def check_tensorrt_supported(device: torch.device, dtype: torch.dtype):
    """The tensorrt module, once device, CUDA, TensorRT and precision are all usable."""
    if device.type != "cuda":
        raise AcceleratorError(f"accelerator 'tensorrt' needs device 'cuda', not {device.type!r}")
    if not torch.cuda.is_available():
        raise AcceleratorError("accelerator 'tensorrt' needs a CUDA GPU, and torch sees none")
    if dtype not in PRECISIONS:
        raise ConfigError(f"accelerator 'tensorrt' builds float16 or float32 engines, not {dtype}")
    return import_tensorrt()


def compute_capability(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def profile_shapes(function: TensorFunction, rows: RowRange, resolution: ResolutionRange, height: int,
                   width: int, dtype: torch.dtype) -> Profile:
    """(min, opt, max) shape of every input, from the rows plan and the resolution range."""
    corners = [(rows.min, resolution.min_height, resolution.min_width), (rows.opt, height, width),
               (rows.max, resolution.max_height, resolution.max_width)]
    shapes = [[tuple(t.shape) for t in function.example_inputs(r, h, w, dtype, "meta")] for r, h, w in corners]
    return {name: (shapes[0][i], shapes[1][i], shapes[2][i]) for i, name in enumerate(function.input_names)}


def engine_key(function: TensorFunction, target: BuildTarget, rows: RowRange, resolution: ResolutionRange,
               precision: str, trt_version: str, device: str) -> EngineKey:
    """The engine's cache key: weights, sizes, rows, precision, TensorRT version, GPU and every input's
    profile shapes (`profile_shapes`: an engine runs only the shapes it was built for; `key_profile`)."""
    profile = profile_shapes(function, rows, resolution, target.height, target.width, target.dtype)
    return EngineKey(kind="tensorrt", network=function.name, model=target.model, loras=tuple(target.loras),
                     weights=loaded_weights_fingerprint(function), precision=precision,
                     builder=f"tensorrt {trt_version}", device=device,
                     inputs=tuple((name, *shapes) for name, shapes in profile.items()),
                     resolution=(resolution.min_height, resolution.min_width, resolution.max_height,
                                 resolution.max_width),
                     opt_resolution=(target.height, target.width), rows=(rows.min, rows.opt, rows.max), bank=function.variant())


def key_profile(key: EngineKey) -> Profile:
    """The optimisation profile an engine key names (what its engine is built with)."""
    return {name: (tuple(low), tuple(opt), tuple(high)) for name, low, opt, high in key.inputs}


def _collecting_logger(trt):
    """A TensorRT logger that forwards to `logging` and keeps errors for the exception message."""

    class CollectingLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return CollectingLogger()


def _progress_monitor(trt, report: BuildProgressFn):
    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            report(phase_name, 0, num_steps)

        def step_complete(self, phase_name, step):
            report(phase_name, step + 1, self.steps.get(phase_name))
            return True

        def phase_finish(self, phase_name):
            self.steps.pop(phase_name, None)

    return Monitor()


def _load_timing_cache(config, path: Path):
    data = b""
    if path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT timing cache %s is unusable (other TensorRT version or GPU?); starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=True)
    return cache


def _save_timing_cache(config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_bytes(memoryview(config.get_timing_cache().serialize()))
    staging.replace(path)


def build_engine(onnx_path: Path, engine_path: Path, profile: Profile, timing_cache: Path,
                 workspace_gb: float | None = None, progress: BuildProgressFn | None = None) -> None:
    """Parse the ONNX graph and build a strongly typed engine with one optimisation profile."""
    trt = import_tensorrt()
    logger = _collecting_logger(trt)
    trt.init_libnvinfer_plugins(logger, "")  # the parser maps some ops to TensorRT's shipped plugins
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AcceleratorError(f"TensorRT cannot parse {onnx_path}: {errors or 'no parser message'}")
    config = builder.create_builder_config()
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 1024 ** 3))
    optimisation = builder.create_optimization_profile()
    for name, (smallest, optimal, largest) in profile.items():
        optimisation.set_shape(name, smallest, optimal, largest)
    config.add_optimization_profile(optimisation)
    _load_timing_cache(config, timing_cache)
    if progress is not None:
        monitor = _progress_monitor(trt, progress)  # must outlive the build
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        detail = "; ".join(logger.errors[-5:]) or "no error message from TensorRT"
        raise AcceleratorError(f"TensorRT failed to build an engine from {onnx_path}: {detail}")
    engine_path.write_bytes(memoryview(serialized))
    _save_timing_cache(config, timing_cache)


def torch_dtypes(trt) -> dict:
    """TensorRT data type → torch dtype, for every type a livediff graph's inputs and outputs can have."""
    return {trt.DataType.HALF: torch.float16, trt.DataType.FLOAT: torch.float32, trt.DataType.BF16: torch.bfloat16,
            trt.DataType.INT32: torch.int32, trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool}


class SharedContextMemory:
    """One device buffer for the scratch (activation) memory of every execution context of a backend.

    Each context would otherwise hold its own, for the lifetime of the engine: the UNet's, both VAE
    halves' and every ControlNet's at once. The networks of one pipeline run one after the other on
    torch's current stream, so one buffer as large as the largest engine's need serves them all
    (as NVIDIA's diffusion demo does). When a new engine needs more, the buffer grows and every
    context is pointed at the new one.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.buffer: torch.Tensor | None = None
        self.contexts: list = []

    def attach(self, context, size: int) -> None:
        """Give `context` (made with the user-managed allocation strategy) memory for `size` bytes."""
        self.contexts.append(context)
        pointed = [context]
        buffer = self.buffer
        if buffer is None or size > buffer.numel():
            buffer = self.buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
            pointed = self.contexts
        for known in pointed:
            known.set_device_memory(buffer.data_ptr(), buffer.numel())


class TensorRTRunner:
    """One engine and execution context; inputs are torch CUDA tensors.

    Outputs are allocated once per input shapes and reused: a call's outputs are valid until the next
    call of this runner with the same shapes (the pipelines consume or copy them before that).
    """

    def __init__(self, function: TensorFunction, engine_path: Path, device: torch.device,
                 memory: SharedContextMemory):
        trt = import_tensorrt()
        self.function = function
        self.device = device
        self.logger = _collecting_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            detail = "; ".join(self.logger.errors[-3:])
            raise AcceleratorError(f"TensorRT cannot load the engine {engine_path} ({detail or 'no message'}); "
                                   f"remove it with `livediff engines clear` and rebuild")
        self.context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        memory.attach(self.context, self.engine.device_memory_size_v2)
        self.memory = memory  # the context works in its buffer: it lives as long as the runner
        io = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in io if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        check_graph_names(function, engine_path, inputs, [n for n in io if n not in inputs], ordered=False)
        types = torch_dtypes(trt)
        names = list(function.input_names) + list(function.output_names)
        unknown = [f"{n} ({self.engine.get_tensor_dtype(n)})" for n in names if self.engine.get_tensor_dtype(n) not in types]
        if unknown:
            raise AcceleratorError(f"the engine {engine_path} has tensors of types livediff does not bind: "
                                   f"{', '.join(unknown)}; rebuild it with `livediff engines clear`")
        self.dtypes = {name: types[self.engine.get_tensor_dtype(name)] for name in names}
        self.profile = {name: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
                        for name in function.input_names}
        self._outputs: dict[tuple[Shape, ...], list[torch.Tensor]] = {}

    def _bind_input(self, name: str, tensor: torch.Tensor) -> None:
        if tensor.dtype != self.dtypes[name]:
            raise AcceleratorError(f"{self.function.name} input {name} is {tensor.dtype}; the engine takes "
                                   f"{self.dtypes[name]}")
        smallest, _, largest = self.profile[name]
        shape = tuple(tensor.shape)
        if not all(lo <= s <= hi for s, lo, hi in zip(shape, smallest, largest)):
            raise AcceleratorError(f"{self.function.name} input {name} has shape {shape}, outside the engine "
                                   f"profile {smallest}..{largest}; rebuild the engine for these rows/sizes "
                                   f"(livediff build-engines with the pipeline's settings)")
        self.context.set_input_shape(name, shape)
        self.context.set_tensor_address(name, tensor.data_ptr())

    def _output_buffers(self, shapes: tuple[Shape, ...]) -> list[torch.Tensor]:
        """The outputs for these input shapes, allocated on their first call (once the input shapes
        are set, the context knows the output shapes)."""
        if shapes not in self._outputs:
            self._outputs[shapes] = [torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name],
                                                 device=self.device) for name in self.function.output_names]
        return self._outputs[shapes]

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> NetworkOutputs:
        inputs = self.function.adapt_inputs(*inputs)
        for name, tensor in zip(self.function.input_names, inputs):
            self._bind_input(name, tensor)
        outputs = self._output_buffers(tuple(tuple(t.shape) for t in inputs))
        for name, out in zip(self.function.output_names, outputs):
            self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise AcceleratorError(f"TensorRT execution of {self.function.name} failed: "
                                   f"{'; '.join(self.logger.errors[-3:]) or 'no message'}")
        return NetworkOutputs.of(self.function, outputs)


class TensorRTBackend:
    """Builds (or reuses) a function's engine from its (cached) ONNX graph and runs it.

    `progress(network, message, done, total)` hears about exports and TensorRT build phases.
    """

    name = "tensorrt"
    static_rows = False

    def __init__(self, target: BuildTarget, options: AcceleratorOptions, progress: ProgressFn | None = None):
        self.target = target
        self.options = options
        self.progress = progress
        self.device = target.device
        self.dtype = target.dtype
        self.trt = check_tensorrt_supported(self.device, self.dtype)
        self.graphs = GraphExporter(target, options, progress)
        self.cache = self.graphs.cache
        self.resolution = self.graphs.resolution
        self.capability = compute_capability(self.device)
        self.timing_cache = self.cache.timing_cache_path(f"tensorrt-{self.trt.__version__}", self.capability)
        self._verified: dict[str, Path] = {}
        self._runners: dict[Path, TensorRTRunner] = {}
        self.memory = SharedContextMemory(self.device)

    def artifact(self, function: TensorFunction) -> Path:
        """The cached engine of `function`, exported and built now when missing or unusable."""
        rows = self.target.rows_for(function)
        key = engine_key(function, self.target, rows, self.resolution, PRECISIONS[self.dtype], self.trt.__version__,
                         self.capability)
        report = None
        if self.progress is not None:
            report = lambda message, done, total: self.progress(function.name, message, done, total)  # noqa: E731

        def build(folder: Path) -> None:
            graph = self.graphs.artifact(function)
            build_engine(graph, folder / ENGINE_FILE, key_profile(key), self.timing_cache, self.options.workspace_gb,
                         report)

        digest = key.digest()
        if digest not in self._verified:  # hash the engine once per process, not at every stream rebuild
            entry = self.cache.get_or_build(key, build, allow_build=self.options.build)
            self._verified[digest] = entry.file(ENGINE_FILE)
        if report:
            report("engine ready", 1, 1)
        return self._verified[digest]

    def runner(self, function: TensorFunction) -> TensorRTRunner:
        """One runner (engine + execution context) per engine, however often a pipeline asks for it; the
        contexts of all of them share one scratch buffer (`SharedContextMemory`)."""
        path = self.artifact(function)
        if path not in self._runners:
            self._runners[path] = TensorRTRunner(function, path, self.device, self.memory)
        return self._runners[path]

