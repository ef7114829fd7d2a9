"""`onnxruntime`: the exported graphs run by ONNX Runtime (CPU EP, or CUDA EP where installed).

On CPU this is how the exported graphs are tested end to end. Graphs come from the `EngineCache`
(exported on first use, reused afterwards). One session per network serves every row count: the
rows axis of the graphs is dynamic, which costs ONNX Runtime nothing. Precision follows the
pipeline: float32 on CPU, float16 (or float32) on CUDA.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from livediff.accelerators.base import AcceleratorOptions, BuildTarget
from livediff.accelerators.onnx_export import GraphExporter, ProgressFn, check_graph_names
from livediff.errors import AcceleratorError, ConfigError
from livediff.network_outputs import NetworkOutputs
from livediff.networks import TensorFunction

_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int64)": torch.int64}
_NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


def providers_for(device: torch.device, stream: int | None = None) -> list:
    """Execution providers for `device`; on CUDA, `stream` (a cudaStream_t as an int) makes ONNX Runtime
    enqueue its work on torch's stream, so nothing has to wait between torch ops and graph runs."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise AcceleratorError(f"accelerator 'onnxruntime' on CUDA needs the GPU wheel of ONNX Runtime, and the "
                                   f"installed one runs only on {', '.join(available)}: replace it with "
                                   f"`pip uninstall -y onnxruntime && pip install onnxruntime-gpu`")
        options = {"device_id": device.index or 0}
        if stream is not None:
            options.update(has_user_compute_stream="1", user_compute_stream=str(stream))
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    raise ConfigError(f"accelerator 'onnxruntime' runs on 'cpu' or 'cuda', not {device.type!r}")


def check_precision(dtype: torch.dtype, device: torch.device) -> None:
    if dtype not in (torch.float32, torch.float16) or (dtype == torch.float16 and device.type == "cpu"):
        raise ConfigError(f"accelerator 'onnxruntime' runs float32 on CPU and float16/float32 on CUDA, "
                          f"not {dtype} on {device.type}")


class OnnxRuntimeRunner:
    """One InferenceSession over one exported graph; torch tensors in and out."""

    def __init__(self, function: TensorFunction, graph: Path, device: torch.device):
        import onnxruntime as ort

        self.function = function
        self.device = device
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if device.type == "cpu":
            options.intra_op_num_threads = torch.get_num_threads()  # the same CPU budget as the torch backends
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None
        self.run_options = ort.RunOptions()
        # work is on torch's stream (user_compute_stream): no device-wide wait at the end of each run
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=providers_for(device, stream))
        except Exception as exc:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise AcceleratorError(f"ONNX Runtime cannot load {graph} for {function.name}: {exc}") from exc
        check_graph_names(function, graph, [i.name for i in self.session.get_inputs()],
                          [o.name for o in self.session.get_outputs()])
        self.input_types = [_ORT_TYPES.get(i.type) for i in self.session.get_inputs()]
        self.output_types = [_ORT_TYPES.get(o.type) for o in self.session.get_outputs()]

    def _check(self, inputs: tuple[torch.Tensor, ...]) -> None:
        if len(inputs) != len(self.input_types):
            raise AcceleratorError(f"{self.function.name} graph takes {len(self.input_types)} inputs, "
                                   f"got {len(inputs)}")
        for name, tensor, expected in zip(self.function.input_names, inputs, self.input_types):
            if tensor.dtype != expected:
                raise AcceleratorError(f"{self.function.name} input {name} is {tensor.dtype} but the graph was "
                                       f"exported for {expected}")

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> NetworkOutputs:
        inputs = self.function.adapt_inputs(*inputs)
        self._check(inputs)
        outputs = self._run_cpu(inputs) if self.device.type == "cpu" else self._run_on_device(inputs)
        return NetworkOutputs.of(self.function, outputs)

    def _run_cpu(self, inputs):
        feeds = {name: t.detach().cpu().numpy() for name, t in zip(self.function.input_names, inputs)}
        return [torch.from_numpy(array) for array in self.session.run(list(self.function.output_names), feeds)]

    def _run_on_device(self, inputs):
        """IO binding on torch-owned device memory, on torch's stream: no host round trip, no synchronise.
        The outputs are allocated from `function.output_shapes` (the meta dry run checks them)."""
        binding = self.session.io_binding()
        index = self.device.index or 0
        for name, tensor in zip(self.function.input_names, inputs):
            binding.bind_input(name, "cuda", index, _NUMPY_TYPES[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        outputs = [torch.empty(shape, dtype=dtype, device=self.device)
                   for shape, dtype in zip(self.function.output_shapes(inputs), self.output_types)]
        for name, tensor in zip(self.function.output_names, outputs):
            binding.bind_output(name, "cuda", index, _NUMPY_TYPES[tensor.dtype], tuple(tensor.shape), tensor.data_ptr())
        self.session.run_with_iobinding(binding, self.run_options)
        return outputs


class OnnxRuntimeBackend:
    """Runs each function's cached ONNX graph (exported on first use) in its own session."""

    name = "onnxruntime"
    static_rows = False

    def __init__(self, target: BuildTarget, options: AcceleratorOptions, progress: ProgressFn | None = None):
        self.device = target.device
        check_precision(target.dtype, self.device)
        providers_for(self.device)
        self.graphs = GraphExporter(target, options, progress)
        self._runners: dict[Path, OnnxRuntimeRunner] = {}

    def artifact(self, function: TensorFunction) -> Path:
        return self.graphs.artifact(function)

    def runner(self, function: TensorFunction) -> OnnxRuntimeRunner:
        """One session per graph, however often a pipeline asks for it (streams are rebuilt on reset)."""
        path = self.artifact(function)
        if path not in self._runners:
            self._runners[path] = OnnxRuntimeRunner(function, path, self.device)
        return self._runners[path]

