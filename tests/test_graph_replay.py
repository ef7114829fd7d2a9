"""CUDA-graph replay (`accelerators.compiled`) on the CPU, capture emulated (`test_accelerators.GraphedRunner`):
a graph for every row count the batcher gives runs shared by sessions, and outputs handed out without
a copy yet read correctly by every consumer."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from livediff import load_pipeline
from livediff.accelerators.eager import EagerBackend
from livediff.pipelines.batching import run_together
from livediff.pipelines.runners import build_target
from test_accelerators import GraphedRunner

SIZE = 64


def frame(seed: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


class CountingCalls:
    """Counts the calls of a runner."""

    def __init__(self, inner):
        self.inner, self.function, self.calls = inner, inner.function, 0

    def __call__(self, *inputs):
        self.calls += 1
        return self.inner(*inputs)


def graphed(pipe) -> list[CountingCalls]:
    """Every network of `pipe` (and of its sessions: they share the runners) through graph replay,
    capturing the row counts the `compile` backend captures (`BuildTarget.steady_rows_for`); the
    replays, counted, in the order encode, decode, banked UNet."""
    target = build_target(pipe.config)
    runners = []
    for owner, name in ((pipe.runners, "encode"), (pipe.runners, "decode"), (pipe, "banked_unet_runner")):
        named = getattr(owner, name)
        function = named.function
        runner = CountingCalls(GraphedRunner(function, target.steady_rows_for(function), function.state_inputs()))
        setattr(owner, name, replace(named, run=runner))
        runners.append(runner)
    return runners


class StaticRowsEager(EagerBackend):
    """Eager runners, with shared runs padded as for `compile` (a backend that compiles per row count)."""

    static_rows = True


def test_every_steady_call_of_one_to_eight_sessions_is_a_replay():
    """Runs shared by k sessions are padded to 2, 4 or 8 times one session's rows: each count gets
    its graph (lazily, on its second call), so from the third frame on every call is a replay.
    Before, only one session's row count was captured and every shared run was launched eagerly."""
    base = load_pipeline(model="tiny", mode="video", t_index_list=[20, 40], cfg_type="self", width=SIZE,
                         height=SIZE, device="cpu", dtype="float32", max_sessions=8, bank=dict(cache_interval=2))
    base.runners = replace(base.runners, backend=StaticRowsEager())
    runners = graphed(base)
    unet = runners[2]
    for k in range(1, 9):
        sessions = [base.new_session(seed=s) for s in range(k)]  # on the backend above, like their runs' group
        for session in sessions:
            session.prepare(prompt="oil painting", guidance_scale=1.4)
            session.banked_unet_runner = base.banked_unet_runner
        for i in range(5):
            if i == 3:  # steady frames: every network call must be a replay
                before = [(r.calls, r.inner.replays) for r in runners]
            paths = [s.frame_calls(frame(10 * s_i + i), output="tensor") for s_i, s in enumerate(sessions)]
            for outcome in run_together(paths):
                outcome.get()
        calls = [r.calls - c for r, (c, _) in zip(runners, before)]
        replays = [r.inner.replays - p for r, (_, p) in zip(runners, before)]
        assert calls == [2, 2, 2] and replays == calls, (k, calls, replays)
    captured = {shapes[0][0][0] for shapes, _ in unet.inner.replay.graphs}
    assert captured == {2, 4, 8, 16}  # one session's 2 rows, and those of runs shared by 2, 3-4 and 5-8


class CopiedBytes(TorchDispatchMode):
    """Bytes written by copies (`copy_`, `clone`) inside the block."""

    def __init__(self):
        super().__init__()
        self.bytes: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if name in ("copy_", "clone"):
            self.bytes[name] += out.numel() * out.element_size()
        return out


def test_a_replay_copies_its_inputs_in_and_nothing_out():
    """A steady replay copies only the inputs that are not read in place (the bank is); its outputs
    are the graph's own, overwritten by the next replay. Before, every output was cloned as well
    (184 MiB per call for the banked UNet at 512²)."""
    replay = GraphedRunner(torch.nn.Identity(), None, state_inputs=(1,)).replay

    def net(x, state):
        return x * 2, x + state

    replay.fn = net
    x, state = torch.ones(4, 8), torch.zeros(4, 8)
    for _ in range(2):
        replay(x, state)  # eager, then captured and replayed
    counted = CopiedBytes()
    with counted:
        first = replay(x, state)
    first_values = [t.clone() for t in first]
    assert sum(counted.bytes.values()) == x.nbytes  # x in; the state read where it is; nothing out
    second = replay(x + 1, state)
    assert all(a is b for a, b in zip(first, second))  # the same tensors, now holding the second call's values
    assert torch.equal(first_values[0], x * 2) and torch.equal(second[0], (x + 1) * 2)


def test_a_video_stream_with_every_network_replayed_equals_eager():
    """Encoder, banked UNet and decoder replayed with their outputs handed out uncopied: every
    consumer reads what it needs before the next replay, or copies what it keeps (the motion of a
    sparse bank needs the previous frame's latents: the next encoder replay overwrites them)."""
    settings = dict(model="tiny", mode="video", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE,
                    device="cpu", dtype="float32", bank=dict(cache_interval=1, sparse_keep_ratio=0.5))
    eager, replayed = load_pipeline(**settings), load_pipeline(**settings)
    for pipe in (eager, replayed):
        pipe.prepare(prompt="oil painting", guidance_scale=1.4)
    runners = graphed(replayed)
    for i in range(6):
        torch.testing.assert_close(replayed(frame(i), output="tensor"), eager(frame(i), output="tensor"),
                                   atol=0, rtol=0)
        for mine, theirs in zip(replayed.bank.tensors(), eager.bank.tensors()):  # what the bank kept
            torch.testing.assert_close(mine, theirs, atol=0, rtol=0)
    assert all(runner.inner.replays >= 3 for runner in runners)
