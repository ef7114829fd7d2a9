"""`compile`: torch.compile of every network, then CUDA-graph replay of each fixed-shape call.

Compilation is static-shape (`dynamic=False`): the stream pipeline only ever uses a handful of row
counts (`BuildTarget.stream_rows`), and a graph specialised to each is faster than a symbolic one.

CUDA graphs remove the per-kernel launch cost, which dominates a 1-step UNet at 512². A graph is
captured per input signature (shapes, dtypes), on the *second* call with that signature: the
first call compiles and warms up, and one-off shapes (the warm-up rows after a reset) never cost a
capture. Inputs are copied into the graph's static buffers and outputs are cloned out, so callers
may keep results across calls. A new row count or bank size is a new signature, hence a new graph;
the oldest graphs are dropped beyond `max_graphs`.

State inputs (the feature bank: hundreds of MiB at 512², updated in place between calls, never
moved) are not copied: when such an input arrives at the same address on two calls in a row, the
graph is captured reading it where it lives, and that graph is replayed only for calls that pass
tensors at those addresses (the addresses are part of its key). A stream's bank therefore costs no
copy per frame; another session sharing the runner (its bank elsewhere) gets a graph of its own,
sharing the compiled code and the memory pool.
"""
from __future__ import annotations

import shutil
from collections import OrderedDict
from typing import Callable, Sequence

import torch

from livediff.errors import AcceleratorError, ConfigError
from livediff.network_outputs import NetworkOutputs
from livediff.networks import TensorFunction

Signature = tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]


def signature(inputs: Sequence[torch.Tensor]) -> Signature:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)


class CapturedCall:
    """One CUDA graph of `fn` over static input buffers shaped like `inputs`; the inputs numbered in
    `in_place` are read where they are (the caller guarantees their addresses on every replay)."""

    def __init__(self, fn: Callable[..., object], inputs: Sequence[torch.Tensor], pool, in_place: frozenset[int]):
        inputs = [t if i in in_place else t.detach().clone() for i, t in enumerate(inputs)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*inputs)  # lazy initialisation (cuBLAS handles, autotuning) must happen outside capture
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            outputs = fn(*inputs)
        self.tuple_output = isinstance(outputs, tuple)
        self.static_outputs = outputs if self.tuple_output else (outputs,)
        # no reference to the in-place inputs: a closed session's bank is freed, and its graph can
        # only be replayed by a call passing tensors at those very addresses
        self.copied = [(i, t) for i, t in enumerate(inputs) if i not in in_place]

    def __call__(self, *inputs: torch.Tensor):
        for i, buffer in self.copied:
            buffer.copy_(inputs[i])
        self.graph.replay()
        outputs = tuple(t.clone() for t in self.static_outputs)
        return outputs if self.tuple_output else outputs[0]


class GraphReplay:
    """Runs `fn` eagerly on a signature's first call and through a captured graph from the second on.

    `capture(fn, inputs)` makes the replayable call; it is a parameter so the bookkeeping (when to
    capture, when to re-capture, eviction) is testable without a GPU.
    """

    def __init__(self, fn: Callable[..., object], name: str, max_graphs: int = 8,
                 capture: Callable[[Callable[..., object], Sequence[torch.Tensor], frozenset[int]],
                                   Callable[..., object]] | None = None,
                 steady_rows: int | None = None, state_inputs: tuple[int, ...] = ()):
        self.fn = fn
        self.name = name
        self.max_graphs = max_graphs
        #: inputs that may be long-lived state (see the module docstring), by position
        self.state_inputs = state_inputs
        #: only calls with this many rows are captured: the warm-up calls after a reset have other
        #: row counts and recur at every reset, and capturing them would only waste graph memory
        self.steady_rows = steady_rows
        self._pool = None
        self._capture = capture or self._capture_cuda
        #: signature → state-input addresses of its last call that ran without a graph
        self._seen: dict[Signature, tuple[int, ...]] = {}
        #: (signature, state-input addresses, or None for a graph that copies every input) → graph
        self.graphs: OrderedDict[tuple[Signature, tuple[int, ...] | None], Callable[..., object]] = OrderedDict()

    def _capture_cuda(self, fn, inputs, in_place):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return CapturedCall(fn, inputs, self._pool, in_place)

    def __call__(self, *inputs: torch.Tensor):
        shapes = signature(inputs)
        addresses = tuple(inputs[i].data_ptr() for i in self.state_inputs)
        key = (shapes, addresses) if (shapes, addresses) in self.graphs else (shapes, None)
        graph = self.graphs.get(key)
        if graph is None:
            if self.steady_rows is not None and inputs[0].shape[0] != self.steady_rows:
                return self.fn(*inputs)
            previous = self._seen.get(shapes)
            self._seen[shapes] = addresses
            if previous is None:
                return self.fn(*inputs)
            in_place = frozenset(self.state_inputs) if previous == addresses and addresses else frozenset()
            key = (shapes, addresses if in_place else None)
            try:
                graph = self._capture(self.fn, inputs, in_place)
            except RuntimeError as exc:
                raise AcceleratorError(f"CUDA graph capture of {self.name} failed for input shapes "
                                       f"{[tuple(t.shape) for t in inputs]}: {exc}") from exc
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        return graph(*inputs)


class CompiledRunner:
    """torch.compile'd network; the first call of each new shape compiles (seconds to minutes)."""

    def __init__(self, function: TensorFunction, mode: str, cuda_graphs: bool, steady_rows: int | None = None):
        self.function = function
        self.compiled = torch.compile(function, mode=mode, dynamic=False, fullgraph=True)
        self._compiled_signatures: set[Signature] = set()
        self._call = (GraphReplay(self._run, function.name, steady_rows=steady_rows,
                                  state_inputs=function.state_inputs()) if cuda_graphs else self._run)

    def _run(self, *inputs: torch.Tensor):
        key = signature(inputs)
        if key in self._compiled_signatures:
            return self.compiled(*inputs)
        try:
            result = self.compiled(*inputs)
        except Exception as exc:  # dynamo/inductor raise many types; the user needs the network and shapes
            raise AcceleratorError(f"torch.compile of {self.function.name} failed for input shapes "
                                   f"{[tuple(t.shape) for t in inputs]}: {exc}") from exc
        self._compiled_signatures.add(key)
        return result

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> NetworkOutputs:
        return NetworkOutputs.of(self.function, self._call(*self.function.adapt_inputs(*inputs)))


def check_compile_supported(device: torch.device, cuda_graphs: bool | None) -> bool:
    """Whether CUDA graphs will be used; raises when the request cannot be met on this device."""
    if device.type == "cuda":
        return True if cuda_graphs is None else cuda_graphs
    if cuda_graphs:
        raise ConfigError(f"cuda_graphs=True needs device 'cuda'; the pipeline runs on {device.type!r} "
                          f"(use cuda_graphs=None or False there)")
    if device.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise AcceleratorError("accelerator 'compile' on CPU needs a C++ compiler (g++ or clang++) on PATH; "
                               "install one or use accelerator='eager'")
    return False


class CompileBackend:
    """One compiled runner per network per process: the sessions of a server (one per browser tab)
    share it, so they share its compiled code, CUDA graphs, static buffers and memory pool instead
    of each capturing their own (calls are serialised by the engine's lock)."""

    def __init__(self, mode: str, cuda_graphs: bool, target=None):
        self.mode = mode
        self.cuda_graphs = cuda_graphs
        self.target = target
        self.name = "compile+cudagraphs" if cuda_graphs else "compile"
        self.static_rows = True
        self._runners: dict[tuple, CompiledRunner] = {}

    def runner(self, function: TensorFunction) -> CompiledRunner:
        key = sharing_key(function)
        if key not in self._runners:
            steady = self.target.rows_for(function).opt if self.target is not None else None
            self._runners[key] = CompiledRunner(function, self.mode, self.cuda_graphs, steady)
        return self._runners[key]


def sharing_key(function: TensorFunction) -> tuple:
    """Functions with this key compute the same thing: same network, same baked-in variant, same
    weights (the banked UNets of two sessions are copies sharing one set of parameters)."""
    first = next(function.parameters(), None)
    weights = first.data_ptr() if first is not None and first.device.type != "meta" else id(first)
    return function.name, function.variant(), weights

