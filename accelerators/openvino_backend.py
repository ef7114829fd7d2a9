"""`openvino`: the exported ONNX graphs converted by OpenVINO and compiled for a CPU, an Intel GPU or an NPU.

Graphs: the same ONNX graphs as `onnxruntime` and `tensorrt` (from the `GraphExporter`), converted
with OpenVINO's own converter and kept in the `EngineCache` as OpenVINO IR (key: OpenVINO version,
OpenVINO device, weight compression). Compiled models are cached by OpenVINO itself in a folder
beside them, so a second start skips compilation on devices that support it.

Shapes: OpenVINO runs fastest on static shapes, and a stream only ever sends a handful of row counts,
so each row count gets its own compiled model (reshaped to static shapes on first use), like a CUDA
graph per signature.

Tensors stay PyTorch CPU tensors: inputs are shared with OpenVINO without a copy and outputs are
written by OpenVINO straight into tensors allocated by torch. The OpenVINO device is a separate
option (`openvino_device`: CPU, GPU, NPU, AUTO); the pipeline itself runs on `cpu`.

Weight compression (`weights="int8"`, via NNCF) is never on by default: it changes the numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from livediff.accelerators.base import AcceleratorOptions, BuildTarget
from livediff.accelerators.engine_cache import EngineKey, weights_fingerprint
from livediff.accelerators.onnx_export import GraphExporter, ProgressFn, check_graph_names
from livediff.errors import AcceleratorError, ConfigError
from livediff.network_outputs import NetworkOutputs
from livediff.networks import TensorFunction

IR_FILE = "model.xml"
DEVICES = ("CPU", "GPU", "NPU", "AUTO")
WEIGHT_FORMATS = ("int8",)


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise AcceleratorError("accelerator 'openvino' needs OpenVINO: pip install 'livediff[openvino]'") from exc
    return openvino


def check_openvino_supported(device: torch.device, dtype: torch.dtype, options: AcceleratorOptions):
    """The openvino module, once the pipeline device, precision and OpenVINO device are all usable."""
    if device.type != "cpu":
        raise ConfigError(f"accelerator 'openvino' exchanges tensors with PyTorch on the CPU: run the pipeline "
                          f"on device 'cpu', not {device.type!r}, and choose the OpenVINO device with "
                          f"openvino_device (one of {', '.join(DEVICES)})")
    if dtype != torch.float32:
        raise ConfigError(f"accelerator 'openvino' takes float32 graphs (OpenVINO picks the device's own "
                          f"inference precision), not {dtype}")
    ov = import_openvino()
    available = ov.Core().available_devices
    family = options.openvino_device.split(".")[0]
    if family != "AUTO" and not any(d.split(".")[0] == family for d in available):
        raise AcceleratorError(f"OpenVINO device {options.openvino_device!r} is not on this machine; "
                               f"available: {', '.join(available)}")
    if options.weights is not None:
        try:
            import nncf  # noqa: F401
        except ImportError as exc:
            raise AcceleratorError(f"weights={options.weights!r} needs NNCF: pip install 'livediff[openvino]'") from exc
    return ov


def openvino_key(function: TensorFunction, target: BuildTarget, options: AcceleratorOptions, resolution,
                 version: str) -> EngineKey:
    precision = "float32" if options.weights is None else f"float32, {options.weights} weights"
    return EngineKey(kind="openvino", network=function.name, model=target.model, loras=tuple(target.loras),
                     weights=weights_fingerprint(function), precision=precision, builder=f"openvino {version}",
                     resolution=(resolution.min_height, resolution.min_width, resolution.max_height,
                                 resolution.max_width), bank=function.variant(), device=options.openvino_device)


def convert(onnx_path: Path, ir_path: Path, weights: str | None) -> None:
    """ONNX → OpenVINO IR (float32 weights, or int8 weights compressed by NNCF)."""
    ov = import_openvino()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # the converter raises its own types (OpConversionFailure, ...)
        raise AcceleratorError(f"OpenVINO cannot convert {onnx_path}: {exc}") from exc
    if weights == "int8":
        import logging

        import nncf

        nncf.set_log_level(logging.ERROR)  # its statistics table would land in the middle of a progress bar
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(model, str(ir_path), compress_to_fp16=False)


class OpenVINORunner:
    """One converted graph; a compiled model and infer request per row count, torch tensors in and out."""

    def __init__(self, function: TensorFunction, ir_path: Path, core, device: str, threads: int):
        self.function = function
        self.core = core
        self.device = device
        self.model = core.read_model(str(ir_path))
        check_graph_names(function, ir_path, [port.get_any_name() for port in self.model.inputs],
                          [port.get_any_name() for port in self.model.outputs])
        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if device.split(".")[0] == "CPU":
            # the same CPU budget as the torch backends, full float32 precision (parity with eager)
            self.config.update({"INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": "f32"})
        self._requests: dict[tuple, object] = {}

    def _request(self, inputs: tuple[torch.Tensor, ...]):
        shapes = tuple(tuple(t.shape) for t in inputs)
        if shapes not in self._requests:
            model = self.model.clone()
            model.reshape({name: list(shape) for name, shape in zip(self.function.input_names, shapes)})
            try:
                compiled = self.core.compile_model(model, self.device, self.config)
            except Exception as exc:
                raise AcceleratorError(f"OpenVINO cannot compile {self.function.name} for {self.device} with "
                                       f"input shapes {list(shapes)}: {exc}") from exc
            self._requests[shapes] = compiled.create_infer_request()
        return self._requests[shapes]

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> NetworkOutputs:
        inputs = self.function.adapt_inputs(*inputs)
        if len(inputs) != len(self.function.input_names):
            raise AcceleratorError(f"{self.function.name} graph takes {len(self.function.input_names)} inputs, "
                                   f"got {len(inputs)}")
        return NetworkOutputs.of(self.function, self._exchange(self._request(inputs), inputs))

    def _exchange(self, request, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """Run the request on torch CPU tensors shared with OpenVINO (no copies either way)."""
        import openvino as ov

        for i, tensor in enumerate(inputs):
            request.set_input_tensor(i, ov.Tensor(tensor.detach().numpy(), shared_memory=True))
        outputs = []
        for i, port in enumerate(request.model_outputs):
            dtype = torch.from_numpy(np.empty(0, port.get_element_type().to_dtype())).dtype
            out = torch.empty(tuple(port.get_shape()), dtype=dtype)
            request.set_output_tensor(i, ov.Tensor(out.numpy(), shared_memory=True))
            outputs.append(out)
        request.infer()
        return outputs


class OpenVINOBackend:
    """Converts (or reuses) each function's OpenVINO IR from its cached ONNX graph and runs it."""

    name = "openvino"
    static_rows = True

    def __init__(self, target: BuildTarget, options: AcceleratorOptions, progress: ProgressFn | None = None):
        self.target = target
        self.options = options
        self.progress = progress
        self.ov = check_openvino_supported(target.device, target.dtype, options)
        self.graphs = GraphExporter(target, options, progress)
        self.cache = self.graphs.cache
        self.core = self.ov.Core()
        # OpenVINO's own cache of compiled models, beside the TensorRT timing caches
        self.core.set_property({"CACHE_DIR": str(self.cache.root / "timing" / f"openvino-{self.ov.__version__}")})
        self._verified: dict[str, Path] = {}
        self._runners: dict[Path, OpenVINORunner] = {}

    def artifact(self, function: TensorFunction) -> Path:
        """The cached IR of `function`, exported and converted now when missing or unusable."""
        key = openvino_key(function, self.target, self.options, self.graphs.resolution, self.ov.__version__)

        def build(folder: Path) -> None:
            graph = self.graphs.artifact(function)
            if self.progress is not None:
                self.progress(function.name, "converting to OpenVINO", 0, None)
            convert(graph, folder / IR_FILE, self.options.weights)

        digest = key.digest()
        if digest not in self._verified:
            entry = self.cache.get_or_build(key, build, allow_build=self.options.build)
            self._verified[digest] = entry.file(IR_FILE)
        if self.progress is not None:
            self.progress(function.name, "OpenVINO model ready", 1, 1)
        return self._verified[digest]

    def runner(self, function: TensorFunction) -> OpenVINORunner:
        path = self.artifact(function)
        if path not in self._runners:
            self._runners[path] = OpenVINORunner(function, path, self.core, self.options.openvino_device,
                                                 torch.get_num_threads())
        return self._runners[path]
