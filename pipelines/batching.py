"""Several streams advanced together: one network call per kind of work for all of them.

A pipeline's frame path is a generator (`StreamPipeline.frame_calls`): it yields every network call
it needs as a `NetworkCall` and is sent the call's outputs back. Everything else a frame does
(stream buffers, residual stock, bank writes, similarity filter) stays inside the pipeline, so the
streaming maths exists once and does not know whether it runs alone or in company:

* `run_alone(path)` runs each call on its own runner: a pipeline's `__call__`;
* `run_together(paths)` runs the paths of several sessions in lockstep: at each round the calls of
  the earliest kind of work (encode, then denoise, then decode) that can share a network are
  stacked along the rows axis, run once, and each session gets its own rows back.

Rows are axis 0 of every input and output of a network (`livediff.networks.TensorFunction`), and
every row of a stream call is computed independently of the other rows (convolutions, attention
and normalisation all work per row), so a session's rows come out of a shared call as they would
from its own call, up to floating-point summation order.

A session that needs more calls than the others (a stream warming up: one UNet call per stage)
makes them in further rounds while the others wait with their next call; a session whose frame
needs no network (the similarity filter skipped it) simply finishes in the first round.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generator, Hashable, Sequence

import torch

from livediff.accelerators.base import padded_rows
from livediff.network_inputs import NetworkInputs
from livediff.network_outputs import NetworkOutputs

ENCODE, DENOISE, DECODE = 0, 1, 2

FramePath = Generator["NetworkCall", Any, Any]


@dataclass(frozen=True)
class NetworkCall:
    """One call of a network a frame needs.

    stage: where it sits in the frame path (ENCODE, DENOISE, DECODE): calls of an earlier stage run
    first, so sessions wait for each other there instead of drifting apart. group: equal for calls
    that may share one run (same networks, same backend, same constants baked into the function);
    `runner` of any member of a group computes every member's rows, and returns `NetworkOutputs`.
    """

    stage: int
    group: Hashable
    runner: Callable[[NetworkInputs], NetworkOutputs]
    inputs: NetworkInputs
    row_unit: int = 0  # > 0: the runner compiles per row count; shared runs are padded (`padded_rows`)

    @property
    def rows(self) -> int:
        return self.inputs.rows

    def share_key(self) -> tuple:
        """Calls with equal keys are stacked into one run: same group, inputs and per-row shapes."""
        return (self.stage, self.group,
                tuple((name, tuple(t.shape[1:]), t.dtype, t.device) for name, t in sorted(self.inputs.items())))

    @torch.no_grad()
    def run(self) -> NetworkOutputs:
        return self.runner(self.inputs)


@torch.no_grad()
def run_shared(calls: Sequence[NetworkCall]) -> list:
    """The outputs of each of `calls` (all with one share key) from a single run of the network.

    Padding rows (zeros) only fill a compiled shape; rows are independent, so they change nothing
    in the others and their outputs are dropped."""
    if len(calls) == 1:
        return [calls[0].run()]
    sizes = [call.rows for call in calls]
    rows = sum(sizes)
    pad = padded_rows(rows, max(call.row_unit for call in calls)) - rows

    def stacked(name: str) -> torch.Tensor:
        parts = [call.inputs[name] for call in calls]
        return torch.cat([*parts, parts[0].new_zeros((pad, *parts[0].shape[1:]))] if pad else parts)

    outputs = calls[0].runner(NetworkInputs({name: stacked(name) for name in calls[0].inputs}))
    pieces = {name: output[:rows].split(sizes) for name, output in outputs.items()}
    return [NetworkOutputs({name: piece[i] for name, piece in pieces.items()}) for i in range(len(calls))]


def run_alone(path: FramePath) -> Any:
    """Drive one frame path, each call on its own runner; returns what the path returns."""
    try:
        call = next(path)
        while True:
            call = path.send(call.run())
    except StopIteration as finished:
        return finished.value


@dataclass
class Outcome:
    """What one frame path of `run_together` gave: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    def get(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


@dataclass
class RoundReport:
    """What one network run of `run_together` did (for operators' statistics)."""

    stage: int
    sessions: int
    rows: int


def run_together(paths: Sequence[FramePath], on_run: Callable[[RoundReport], None] | None = None) -> list[Outcome]:
    """Drive several frame paths in lockstep, sharing network runs; one `Outcome` per path, in order.

    A path that raises stops alone (its outcome holds the error); a network run that raises ends
    every path that was in it. `on_run` hears of every network run.
    """
    outcomes = [Outcome() for _ in paths]
    pending: dict[int, NetworkCall] = {}

    def advance(i: int, step: Callable[[], NetworkCall]) -> None:
        """Resume path i with `step` (start it, send it outputs, or throw it an error)."""
        pending.pop(i, None)
        try:
            pending[i] = step()
        except StopIteration as finished:
            outcomes[i].value = finished.value
        except Exception as exc:  # one session's bad frame must not stop the others
            outcomes[i].error = exc

    for i, path in enumerate(paths):
        advance(i, path.__next__)
    while pending:
        stage = min(call.stage for call in pending.values())
        groups: dict[tuple, list[int]] = {}
        for i, call in pending.items():
            if call.stage == stage:
                groups.setdefault(call.share_key(), []).append(i)
        for members in groups.values():
            calls = [pending[i] for i in members]
            try:
                outputs = run_shared(calls)
            except Exception as exc:
                for i in members:
                    advance(i, partial(paths[i].throw, exc))
                continue
            if on_run is not None:
                on_run(RoundReport(stage, len(calls), sum(call.rows for call in calls)))
            for i, output in zip(members, outputs):
                advance(i, partial(paths[i].send, output))
    return outcomes
