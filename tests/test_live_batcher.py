"""The UI's single inference loop: frames of live sessions share network runs, a newer frame replaces
a waiting one, a silent session delays the others by at most the batch wait, errors stay with
their session."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from livediff.app.ui.batcher import LiveBatcher, Superseded
from livediff.network_inputs import NetworkInputs
from livediff.network_outputs import NetworkOutputs
from livediff.pipelines.batching import DENOISE, NetworkCall


def wait_until(condition, timeout_s: float = 10.0) -> None:
    """Poll `condition` (the loop thread moves on its own); give up silently after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


class Doubler:
    """A network that doubles its input and remembers how many rows each run had."""

    def __init__(self):
        self.runs: list[int] = []

    def __call__(self, inputs: NetworkInputs) -> NetworkOutputs:
        self.runs.append(inputs.rows)
        return NetworkOutputs({"doubled": 2 * inputs["x"]})


class FakePipe:
    """Just a frame path: one shared network call, then the session's own arithmetic."""

    def __init__(self, network: Doubler, offset: float):
        self.network = network
        self.offset = offset

    def frame_calls(self, frame):
        if frame is None:
            raise ValueError("no frame")
        outputs = yield NetworkCall(DENOISE, "doubler", self.network, NetworkInputs({"x": torch.full((1, 2), float(frame))}))
        return outputs["doubled"] + self.offset


def test_frames_waiting_together_share_one_run_and_each_gets_its_own_result():
    network, lock = Doubler(), threading.Lock()
    batcher = LiveBatcher(lock, wait_s=0.5)
    pipes = {f"s{i}": FakePipe(network, offset=100 * i) for i in range(4)}
    lock.acquire()  # hold the networks until every frame has arrived
    with ThreadPoolExecutor(4) as pool:
        futures = {sid: pool.submit(batcher.run, sid, pipe, i + 1) for i, (sid, pipe) in enumerate(pipes.items())}
        wait_until(lambda: batcher.active_sessions() == 4)
        lock.release()
        results = {sid: f.result(timeout=10) for sid, f in futures.items()}
    for i, sid in enumerate(pipes):
        picture, started = results[sid]
        assert torch.equal(picture, torch.full((1, 2), 2.0 * (i + 1) + 100 * i))
    # frames that arrived while the loop was busy went together (the first ones may have gone before)
    assert sum(network.runs) == 4 and len(network.runs) <= 2
    stats = batcher.stats()
    assert stats.max_sessions >= 2 and stats.active_sessions == 4
    batcher.stop()


def test_a_newer_frame_replaces_the_waiting_one():
    network, lock = Doubler(), threading.Lock()
    batcher = LiveBatcher(lock, wait_s=0.0)
    pipe = FakePipe(network, 0.0)
    with ThreadPoolExecutor(3) as pool:
        with lock:
            first = pool.submit(batcher.run, "s", pipe, 1)
            wait_until(lambda: "s" in batcher._waiting or network.runs)
            time.sleep(0.05)  # the loop has taken frame 1 and waits for the lock, or frame 1 still waits
            second = pool.submit(batcher.run, "s", pipe, 2)
            third = pool.submit(batcher.run, "s", pipe, 3)
            time.sleep(0.05)
        outcomes = []
        for future in (first, second, third):
            try:
                outcomes.append(future.result(timeout=10)[0].flatten()[0].item())
            except Superseded:
                outcomes.append("superseded")
    # frames 2 and 3 waited together: only the newest was computed
    assert outcomes[2] == 6.0 and "superseded" in outcomes[:2]
    batcher.stop()


def test_a_silent_session_delays_the_others_by_at_most_the_wait():
    network, lock = Doubler(), threading.Lock()
    batcher = LiveBatcher(lock, wait_s=0.2, active_s=60)
    quiet, busy = FakePipe(network, 0.0), FakePipe(network, 0.0)
    batcher.run("quiet", quiet, 1)  # active from now on, but sends nothing more
    for i in range(3):
        picture, _ = batcher.run("busy", busy, i)  # each waits for the quiet one, then goes alone
        assert picture.flatten()[0].item() == 2.0 * i
    assert network.runs == [1, 1, 1, 1]
    batcher.forget("quiet")
    assert batcher.active_sessions() == 1
    batcher.stop()


def test_errors_stay_with_their_session_and_the_loop_goes_on():
    network, lock = Doubler(), threading.Lock()
    batcher = LiveBatcher(lock, wait_s=0.3)
    pipe = FakePipe(network, 0.0)
    with ThreadPoolExecutor(2) as pool:
        good = pool.submit(batcher.run, "good", pipe, 4)
        bad = pool.submit(batcher.run, "bad", pipe, None)
        assert good.result(timeout=10)[0].flatten()[0].item() == 8.0
        with pytest.raises(ValueError, match="no frame"):
            bad.result(timeout=10)
    assert batcher.run("good", pipe, 5)[0].flatten()[0].item() == 10.0
    batcher.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.run("good", pipe, 1)


def test_max_batch_caps_a_batch_and_the_oldest_frames_go_first():
    network, lock = Doubler(), threading.Lock()
    batcher = LiveBatcher(lock, wait_s=0.5, max_batch=2)
    pipes = [FakePipe(network, 0.0) for _ in range(5)]
    lock.acquire()
    with ThreadPoolExecutor(5) as pool:
        futures = []
        for i, pipe in enumerate(pipes):
            futures.append(pool.submit(batcher.run, f"s{i}", pipe, i))
            time.sleep(0.02)
        wait_until(lambda: batcher.active_sessions() == 5)
        lock.release()
        started = [f.result(timeout=10)[1] for f in futures]
    assert max(network.runs) <= 2 and sum(network.runs) == 5
    assert started == sorted(started)  # first come, first served
    batcher.stop()


def test_the_batch_settings_are_validated():
    with pytest.raises(ValueError, match="batch wait 2"):
        LiveBatcher(threading.Lock(), wait_s=2)
    with pytest.raises(ValueError, match="max batch 0"):
        LiveBatcher(threading.Lock(), max_batch=0)


def test_tensorrt_batches_only_when_asked_and_its_engines_are_then_built_for_the_batch():
    from livediff.app.ui.engine import session_batch_limit
    from livediff.pipelines import StreamConfig
    from livediff.pipelines.runners import build_target

    assert session_batch_limit("tensorrt", None) == 1 and session_batch_limit("tensorrt", 4) == 4
    assert session_batch_limit("onnxruntime", None) == 8
    one = build_target(StreamConfig(model="tiny", cfg_type="full", t_index_list=(20, 40), device="cpu"))
    four = build_target(StreamConfig(model="tiny", cfg_type="full", t_index_list=(20, 40), device="cpu",
                                     max_sessions=4))

    class VAE:
        stream_rows = False

    unet = object()
    assert (one.rows_for(unet).min, one.rows_for(unet).opt, one.rows_for(unet).max) == (1, 4, 4)
    assert (four.rows_for(unet).min, four.rows_for(unet).opt, four.rows_for(unet).max) == (1, 4, 16)
    assert (four.rows_for(VAE).min, four.rows_for(VAE).max) == (1, 4)


def test_max_sessions_is_validated():
    from livediff.errors import ConfigError
    from livediff.pipelines import StreamConfig

    with pytest.raises(ConfigError, match="max_sessions 0 is outside 1..64"):
        StreamConfig(model="tiny", device="cpu", max_sessions=0)
