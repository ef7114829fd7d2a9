"""`compile`: torch.compile of every network, then CUDA-graph replay of each fixed-shape call.

Compilation is static-shape (`dynamic=False`): the stream pipeline only ever uses a handful of row
counts (`BuildTarget.stream_rows`), and a graph specialised to each is faster than a symbolic one.
Each signature is compiled on a code object of its own (`fresh_code`), so no variant or row count
spends another's recompile budget; a runner per network variant is shared and released when
unused (`CompileBackend`).

CUDA graphs remove the per-kernel launch cost, which dominates a 1-step UNet at 512². A graph is
captured per input signature (shapes, dtypes), on the *second* call with that signature: the
first call compiles and warms up, and one-off shapes (the warm-up rows after a reset) never cost a
capture. Only the steady row counts are captured: one session's, and each padded row count of runs
shared by sessions (`BuildTarget.steady_rows_for`). A new row count or bank size is a new
signature, hence a new graph; the oldest graphs are dropped beyond `max_graphs`.

Inputs are copied into the graph's static buffers. Outputs are not copied out: a replay returns
the graph's own output tensors, valid until the next replay of the same graph (the banked UNet's
are 184 MiB at 512², and the bank reads them only every 4th frame). A caller that keeps an output
past its frame copies what it keeps; everything a frame path reads of a call's outputs it reads
before its next call of that network (`pipelines.batching`).

State inputs (the feature bank: hundreds of MiB at 512², updated in place between calls, never
moved) are not copied: when such an input arrives at the same address on two calls in a row, the
graph is captured reading it where it lives, and that graph is replayed only for calls that pass
tensors at those addresses (the addresses are part of its key). A stream's bank therefore costs no
copy per frame; another session sharing the runner (its bank elsewhere) gets a graph of its own,
sharing the compiled code and the memory pool.
"""
from __future__ import annotations

import builtins
import shutil
import types
import weakref
from collections import OrderedDict
from typing import Any, Callable, Collection, Sequence

import torch

from livediff.accelerators.base import BuildTarget
from livediff.errors import AcceleratorError, ConfigError
from livediff.network_outputs import NetworkOutputs
from livediff.networks import TensorFunction

Signature = tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]


def signature(inputs: Sequence[torch.Tensor]) -> Signature:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)


class CudaGraphRecorder:
    """Records one call into a CUDA graph, in the memory pool the runner's graphs share."""

    def __init__(self, pool):
        self.pool = pool
        self.graph = torch.cuda.CUDAGraph()

    def record(self, fn: Callable[..., object], inputs: Sequence[torch.Tensor]):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*inputs)  # lazy initialisation (cuBLAS handles, autotuning) must happen outside capture
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph, pool=self.pool):
            return fn(*inputs)

    def replay(self) -> None:
        self.graph.replay()


class CapturedCall:
    """One recorded call of `fn` over static input buffers shaped like `inputs`; the inputs numbered
    in `in_place` are read where they are (the caller guarantees their addresses on every replay).

    A replay returns the recorded output tensors themselves, overwritten by the next replay of this
    call (see the module docstring). `recorder`: `CudaGraphRecorder`, or a CPU stand-in in tests."""

    def __init__(self, fn: Callable[..., object], inputs: Sequence[torch.Tensor], in_place: frozenset[int],
                 recorder):
        inputs = [t if i in in_place else t.detach().clone() for i, t in enumerate(inputs)]
        self.recorder = recorder
        outputs = recorder.record(fn, inputs)
        self.tuple_output = isinstance(outputs, tuple)
        self.static_outputs = outputs if self.tuple_output else (outputs,)
        # no reference to the in-place inputs: a closed session's bank is freed, and its graph can
        # only be replayed by a call passing tensors at those very addresses
        self.copied = [(i, t) for i, t in enumerate(inputs) if i not in in_place]

    def __call__(self, *inputs: torch.Tensor) -> Any:
        for i, buffer in self.copied:
            buffer.copy_(inputs[i])
        self.recorder.replay()
        return self.static_outputs if self.tuple_output else self.static_outputs[0]


class GraphReplay:
    """Runs `fn` eagerly on a signature's first call and through a captured graph from the second on.

    `capture(fn, inputs)` makes the replayable call; it is a parameter so the bookkeeping (when to
    capture, when to re-capture, eviction) is testable without a GPU.
    """

    def __init__(self, fn: Callable[..., object], name: str, max_graphs: int = 8,
                 capture: Callable[[Callable[..., object], Sequence[torch.Tensor], frozenset[int]],
                                   Callable[..., object]] | None = None,
                 steady_rows: Collection[int] | None = None, state_inputs: tuple[int, ...] = ()):
        self.fn = fn
        self.name = name
        self.max_graphs = max_graphs
        #: inputs that may be long-lived state (see the module docstring), by position
        self.state_inputs = state_inputs
        #: only calls with these row counts are captured (None: all): the warm-up calls after a reset
        #: have other row counts and recur at every reset, and capturing them would only waste graph
        #: memory; runs shared by sessions have padded row counts of their own (`padded_rows`)
        self.steady_rows = frozenset(steady_rows) if steady_rows is not None else None
        self._pool = None
        self._capture = capture  # None: CUDA (not the bound method: a cycle would keep graphs alive until gc)
        #: signature → state-input addresses of its last call that ran without a graph
        self._seen: dict[Signature, tuple[int, ...]] = {}
        #: (signature, state-input addresses, or None for a graph that copies every input) → graph
        self.graphs: OrderedDict[tuple[Signature, tuple[int, ...] | None], Callable[..., object]] = OrderedDict()

    def _capture_cuda(self, fn, inputs, in_place):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        return CapturedCall(fn, inputs, in_place, CudaGraphRecorder(self._pool))

    def __call__(self, *inputs: torch.Tensor) -> Any:
        shapes = signature(inputs)
        addresses = tuple(inputs[i].data_ptr() for i in self.state_inputs)
        key = (shapes, addresses) if (shapes, addresses) in self.graphs else (shapes, None)
        graph = self.graphs.get(key)
        if graph is None:
            if self.steady_rows is not None and inputs[0].shape[0] not in self.steady_rows:
                return self.fn(*inputs)
            previous = self._seen.get(shapes)
            self._seen[shapes] = addresses
            if previous is None:
                return self.fn(*inputs)
            in_place = frozenset(self.state_inputs) if previous == addresses and addresses else frozenset()
            key = (shapes, addresses if in_place else None)
            try:
                graph = (self._capture or self._capture_cuda)(self.fn, inputs, in_place)
            except RuntimeError as exc:
                raise AcceleratorError(f"CUDA graph capture of {self.name} failed for input shapes "
                                       f"{[tuple(t.shape) for t in inputs]}: {exc}") from exc
            self.graphs[key] = graph
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        return graph(*inputs)


def fresh_code(function: TensorFunction) -> Callable[..., object]:
    """A function calling `function` with a code object and a globals dict of its own.

    Dynamo keeps compiled entries on the code object it compiles and counts recompiles there
    (`torch._dynamo.config.recompile_limit`, 8; with `fullgraph=True` the ninth is an error).
    Compiling the module itself would put every banked-UNet variant and every row count on the one
    `forward` code object all instances share; a fresh function per compiled shape is compiled
    exactly once. Dynamo installs the compiled graph in the globals of the code it compiled, so
    private globals are what lets the graph go with the function (`CompiledShapes`)."""
    def call(*inputs: torch.Tensor):
        return function(*inputs)

    return types.FunctionType(call.__code__.replace(), {"__builtins__": builtins}, call.__name__,
                              call.__defaults__, call.__closure__)


def _drop_values(namespace: dict) -> None:
    """Let go of what dynamo installed in `namespace` (the compiled graph among it): its guards
    outlive their code while an object they matched by identity lives (the shared UNet's modules)
    and hold the namespace. The names stay for dynamo's own clean-up, which deletes them."""
    for name in namespace:
        namespace[name] = None


class CompiledShapes:
    """`function` compiled once per input signature (each on its own code object, `fresh_code`).

    A variant's signatures are its stream's few row counts; they are kept as long as the variant
    (a CUDA graph captured from one must not outlive its kernels), and released with it."""

    def __init__(self, function: TensorFunction, mode: str, compiler: str | Callable[..., object]):
        self.function = function
        self.mode = mode
        self.compiler = compiler
        self.compiled: dict[Signature, Callable[..., object]] = {}

    def _compile(self) -> Callable[..., object]:
        entry = fresh_code(self.function)
        # modes are inductor's; another dynamo backend takes none
        mode = self.mode if self.compiler == "inductor" else None
        compiled = torch.compile(entry, backend=self.compiler, mode=mode, dynamic=False, fullgraph=True)
        weakref.finalize(compiled, _drop_values, entry.__globals__)
        return compiled

    def __call__(self, *inputs: torch.Tensor) -> Any:
        key = signature(inputs)
        compiled = self.compiled.get(key)
        if compiled is not None:
            return compiled(*inputs)
        compiled = self._compile()
        try:
            result = compiled(*inputs)
        except Exception as exc:  # dynamo/inductor raise many types; the user needs the network and shapes
            raise AcceleratorError(f"torch.compile of {self.function.name} failed for input shapes "
                                   f"{[tuple(t.shape) for t in inputs]}: {exc}") from exc
        self.compiled[key] = compiled
        return result


class CompiledRunner:
    """torch.compile'd network; the first call of each new shape compiles (seconds to minutes).

    `steady_rows`: the row counts worth a CUDA graph (`BuildTarget.steady_rows_for`)."""

    def __init__(self, function: TensorFunction, mode: str, cuda_graphs: bool, steady_rows: Collection[int] | None = None,
                 compiler: str | Callable[..., object] = "inductor"):
        self.function = function
        self.shapes = CompiledShapes(function, mode, compiler)
        self._call = (GraphReplay(self.shapes, function.name, steady_rows=steady_rows,
                                  state_inputs=function.state_inputs()) if cuda_graphs else self.shapes)

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
    """One compiled runner per network variant per process: the sessions of a server (one per browser
    tab) share it, so they share its compiled code, CUDA graphs, static buffers and memory pool
    instead of each capturing their own (calls are serialised by the engine's lock).

    A variant (`TensorFunction.variant`: bank size, token merging, fusion) lives as long as a
    pipeline holds its runner, and the last `keep` variants asked for stay besides, so a setting
    moved back and forth in the UI (which builds a new pipeline on each change) reuses its compiled
    code; older ones, with their graphs and memory pool, are released.

    compiler: the dynamo backend, "inductor" unless a test counts compilations
    (`torch._dynamo.testing.CompileCounter`).
    """

    def __init__(self, mode: str, cuda_graphs: bool, target: BuildTarget | None = None,
                 compiler: str | Callable[..., object] = "inductor", keep: int = 4):
        self.mode = mode
        self.cuda_graphs = cuda_graphs
        self.target = target
        self.compiler = compiler
        self.keep = keep
        self.name = "compile+cudagraphs" if cuda_graphs else "compile"
        self.static_rows = True
        self._live: weakref.WeakValueDictionary[tuple, CompiledRunner] = weakref.WeakValueDictionary()
        self._recent: OrderedDict[tuple, CompiledRunner] = OrderedDict()

    def runner(self, function: TensorFunction) -> CompiledRunner:
        key = sharing_key(function)
        runner = self._live.get(key)
        if runner is None:
            steady = self.target.steady_rows_for(function) if self.target is not None else None
            runner = CompiledRunner(function, self.mode, self.cuda_graphs, steady, self.compiler)
            self._live[key] = runner
        self._recent[key] = runner
        self._recent.move_to_end(key)
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)
        return runner

    def variants(self) -> int:
        """How many compiled variants are alive (held by a pipeline or among the last `keep`)."""
        return len(self._live)


def sharing_key(function: TensorFunction) -> tuple:
    """Functions with this key compute the same thing: same network, same baked-in variant, same
    weights (the banked UNets of two sessions are copies sharing one set of parameters)."""
    first = next(function.parameters(), None)
    weights = first.data_ptr() if first is not None and first.device.type != "meta" else id(first)
    return function.name, function.variant(), weights

