"""Nothing heavy under the engine lock, and nothing on the device outside it.

A frame's host part (checking it, stacking its pixels, canny) runs in the caller's thread before the
lock; under the lock the frame goes up as uint8 (a quarter of float32's bytes) and is converted on
the device. The ControlNet preview's read back takes the lock too, so it never runs inside another
call's CUDA graph capture. Counted on the `meta` device (host tensors there are the host's work) and
with the CPU stand-in for capture (`test_accelerators.EmulatedGraph`).
"""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.engine_lock import TensorOut
from livediff import load_pipeline
from livediff.app.ui import control_preview
from livediff.app.ui.batcher import LiveBatcher
from livediff.network_inputs import NetworkInputs
from livediff.network_outputs import NetworkOutputs
from livediff.pipelines.batching import DENOISE, NetworkCall
from livediff.pipelines.frames import host_frames
from livediff.pipelines.preprocessors import canny as canny_module

SIZE = 64
CANNY = [dict(model="random", preprocessor="canny")]


class HostOps(TorchDispatchMode):
    """Every operator that touches a host tensor of at least a frame's channel (H·W elements): its
    name and, for copies to another device, the bytes that went up."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.uploaded = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        hosted = [a for a in (*args, *(kwargs or {}).values())
                  if isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.numel() >= SIZE * SIZE]
        if hosted:
            self.ops.append(name)
            if name in ("_to_copy", "copy_") and isinstance(out, torch.Tensor) and out.device.type != "cpu":
                source = args[1] if name == "copy_" else args[0]
                self.uploaded += source.numel() * source.element_size()
        return out


class RecordingLock:
    """The engine lock, recording the host operators the thread holding it runs (`HostOps`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.owner: int | None = None
        self.seen = HostOps()

    def __enter__(self):
        self._lock.acquire()
        self.owner = threading.get_ident()
        self.seen.__enter__()
        return self

    def __exit__(self, *exc):
        self.seen.__exit__(*exc)
        self.owner = None
        self._lock.release()


def meta_pipe(**settings):
    pipe = load_pipeline(model="tiny", width=SIZE, height=SIZE, device="meta", dtype="float16",
                         t_index_list=(20, 40), **settings)
    pipe.prepare(prompt="oil painting")
    return pipe


def camera(i: int, frames: int = 1):
    arrays = [np.random.default_rng(i + k).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for k in range(frames)]
    return arrays if frames > 1 else arrays[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_converting_after_the_upload_gives_what_the_host_conversion_gave(dtype):
    """The host's old formula, float32 first then the model's dtype, bit for bit (CPU standing in for
    the device), for arrays and for float tensors."""
    arrays = camera(0, 2)
    host = torch.stack([torch.tensor(a).permute(2, 0, 1).float() / 127.5 - 1 for a in arrays]).to(dtype)
    assert torch.equal(host_frames(arrays, SIZE, SIZE, 2).to_model(torch.device("cpu"), dtype), host)
    tensor = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    converted = host_frames(tensor, SIZE, SIZE, 1).to_model(torch.device("cpu"), dtype)
    assert torch.equal(converted, (tensor.float().clamp(0, 1) * 2 - 1).unsqueeze(0).to(dtype))


@pytest.mark.parametrize("frames", [1, 2])
def test_a_frame_goes_up_as_uint8(frames):
    """F·3·H·W bytes per steady frame (float32 went up before: 4× that)."""
    pipe = meta_pipe(frame_buffer_size=frames)
    for i in range(3):
        pipe(camera(i, frames), output="tensor")
    with HostOps() as seen:
        pipe(camera(3, frames), output="tensor")
    assert seen.uploaded == frames * 3 * SIZE * SIZE


@pytest.mark.parametrize("controlnet", [(), CANNY], ids=["plain", "canny"])
def test_nothing_but_the_upload_runs_on_the_host_under_the_lock(controlnet, monkeypatch):
    """Through the UI's batcher: under the lock the host only uploads the uint8 frame (and canny's uint8
    edges); the float conversion happens on the device, canny runs in the caller's thread, before the lock."""
    lock = RecordingLock()
    canny_calls = []
    canny = canny_module.canny

    def watched(*args):
        canny_calls.append(lock.owner is not None)
        return canny(*args)

    monkeypatch.setattr(canny_module, "canny", watched)
    batcher = LiveBatcher(lock, wait_s=0.0)  # type: ignore[arg-type]  # a lock, recording
    pipe = TensorOut(meta_pipe(controlnet=controlnet))
    try:
        for i in range(3):
            picture, _ = batcher.run("s", pipe, camera(i))
            assert picture.device.type == "meta"
    finally:
        batcher.stop()
    assert canny_calls == [False] * (3 if controlnet else 0)
    assert set(lock.seen.ops) == {"_to_copy"}
    edges = 1 if controlnet else 0  # canny's edges go up on one channel
    assert lock.seen.uploaded == 3 * (3 + edges) * SIZE * SIZE


class CapturingGraph:
    """The CPU capture stand-in (`EmulatedGraph`), with a flag up while a capture is in progress; the
    capture lets `during_capture` run first (it waits up to `grace_s` for it to finish, as a real
    capture takes its time)."""

    def __init__(self, during_capture, grace_s: float = 0.5):
        from test_accelerators import EmulatedGraph

        self.graph = EmulatedGraph()
        self.capturing = False
        self.during_capture = during_capture
        self.grace_s = grace_s

    def __call__(self, fn, inputs, in_place):
        self.capturing = True
        try:
            other = threading.Thread(target=self.during_capture)
            other.start()
            other.join(self.grace_s)
            return self.graph(fn, inputs, in_place)
        finally:
            self.capturing = False


def test_the_control_preview_never_runs_inside_a_capture(monkeypatch):
    """A preview tick while the batcher's network call captures its graph waits for the lock: its
    read back runs after the capture, never during it (global capture mode would fail the capture)."""
    from livediff.accelerators.compiled import GraphReplay

    lock = threading.Lock()
    streamed = SimpleNamespace(last_control=(torch.rand(1, 3, 8, 8),))
    registry = SimpleNamespace(engine=SimpleNamespace(lock=lock), on_close=lambda forget: None,
                               peek=lambda session_id: SimpleNamespace(current=lambda mode: streamed))
    preview = control_preview.ControlPreview(registry, stream_of=lambda owner: None)  # type: ignore[arg-type]
    pictures = []
    capture = CapturingGraph(lambda: pictures.append(preview.latest("tab")))
    during = []
    picture = control_preview.control_picture

    def watched(control):
        during.append(capture.capturing)
        return picture(control)

    monkeypatch.setattr(control_preview, "control_picture", watched)
    replay = GraphReplay(lambda x: x * 2, "net", capture=capture)

    class Pipe:
        def frame_calls(self, frame):
            outputs = yield NetworkCall(DENOISE, "net", lambda inputs: NetworkOutputs({"y": replay(inputs["x"])}),
                                        NetworkInputs({"x": torch.full((1, 2), float(frame))}))
            return outputs["y"]

    batcher = LiveBatcher(lock, wait_s=0.0)
    try:
        for i in range(2):  # the second call of a shape is captured
            assert torch.equal(batcher.run("s", Pipe(), i)[0], torch.full((1, 2), 2.0 * i))
    finally:
        batcher.stop()
    for _ in range(100):
        if pictures:
            break
        threading.Event().wait(0.05)
    assert during == [False] and pictures[0].shape == (8, 8, 3)
