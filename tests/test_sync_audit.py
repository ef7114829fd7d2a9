"""No host reads on the hot path: a GPU must never wait for the CPU to look at a tensor mid-frame.

Counted on real CPU runs over steady frames, over the whole frame (every step of the frame path and
every network call, through `run_alone` or `run_together`), with what crosses the host boundary by
definition left out: the frame's host part, done before the upload (`frames.host_frames` checks a
CPU frame's values and stacks its pixels; `ControlImages.on_host` runs `pixels` preprocessors such as
canny on them: they read host pixels, never the device's) and, for the graph runners, the CPU execution provider's
own exchange with ONNX Runtime / OpenVINO (`OnnxRuntimeRunner._run_cpu`, `OpenVINORunner._exchange`:
on a GPU, ONNX Runtime binds device memory instead). What is counted:
* device→host reads: `.item()`, `bool/float/int(t)`, `.tolist()`, `.cpu()`, `.numpy()`,
  `torch.equal`, and at the operator level `_local_scalar_dense`, `nonzero`, `is_nonzero`,
  `masked_select` (boolean-mask indexing);
* host→device copies: tensors made from Python or NumPy data (`torch.tensor`, `as_tensor`,
  `from_numpy`).
Budget: 0 per steady frame (causal video: per steady chunk) in every mode and on every runner (eager,
onnxruntime, openvino, and CUDA-graph replay with the CPU stand-in for capture); the similarity
filter (one read per frame, by design) is off.

The audit once wrapped `encode` and `denoise`, which became generators (frame paths): it counted only
their creation, not their work, and passed a stream step that read a value back. It now counts the
whole path, and `test_the_audit_sees_a_host_read_inside_the_denoise_step` keeps it honest.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from contextlib import contextmanager, nullcontext

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from livediff import load_pipeline
from parity_matrix import CASES, frame as moving_frame

SIZE = 64
READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
         torch.Tensor.__int__, torch.Tensor.cpu, torch.Tensor.numpy, torch.equal}
COPIES = {torch.tensor, torch.as_tensor, torch.from_numpy}
SYNC_OPS = {"_local_scalar_dense", "nonzero", "is_nonzero", "masked_select", "equal"}


class HostTraffic(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()
        self.paused = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.paused and (func in READS or func in COPIES):
            self.seen[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


class SyncOps(TorchDispatchMode):
    def __init__(self, traffic: HostTraffic):
        super().__init__()
        self.traffic = traffic

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if not self.traffic.paused and name in SYNC_OPS:
            self.traffic.seen[f"aten.{name}"] += 1
        return func(*args, **(kwargs or {}))


def _paused(traffic: HostTraffic, inner):
    def run(*args, **kwargs):
        traffic.paused += 1
        try:
            return inner(*args, **kwargs)
        finally:
            traffic.paused -= 1

    return run


@contextmanager
def counting(traffic: HostTraffic, monkeypatch):
    """Count host traffic inside the block, except at the host boundaries named in the module docstring."""
    from livediff.accelerators.onnxruntime_backend import OnnxRuntimeRunner
    from livediff.accelerators.openvino_backend import OpenVINORunner
    from livediff.pipelines import frames, stream_pipeline
    from livediff.pipelines.causal import pipeline as causal_pipeline
    from livediff.pipelines.control import ControlImages

    with monkeypatch.context() as patch:
        for module in (stream_pipeline, causal_pipeline):
            patch.setattr(module, "host_frames", _paused(traffic, frames.host_frames))
        patch.setattr(ControlImages, "on_host", _paused(traffic, ControlImages.on_host))
        patch.setattr(OnnxRuntimeRunner, "_run_cpu", _paused(traffic, OnnxRuntimeRunner._run_cpu))
        patch.setattr(OpenVINORunner, "_exchange", _paused(traffic, OpenVINORunner._exchange))
        with traffic, SyncOps(traffic):
            yield traffic


def frame(i: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i))


def with_graph_replay(pipe) -> list:
    """The pipeline's runners replaced by `compile`-with-CUDA-graphs runners over its functions,
    capture emulated on the CPU (`test_accelerators.GraphedRunner`)."""
    from livediff.pipelines.stream import stream_rows
    from test_accelerators import GraphedRunner

    settings = pipe.settings
    rows = stream_rows(len(settings.t_index_list), pipe.config.frame_buffer_size, settings.cfg_type).opt
    replays = []
    for name in ("unet", "encode", "decode"):
        named = getattr(pipe.runners, name)
        if named is not None:
            replay = GraphedRunner(named.function, (rows,) if name == "unet" else None)
            setattr(pipe.runners, name, replace(named, run=replay))
            replays.append(replay)
    if hasattr(pipe, "banked_unet_runner"):
        named = pipe.banked_unet_runner
        replay = GraphedRunner(named.function, (rows,), named.function.state_inputs())
        pipe.banked_unet_runner = replace(named, run=replay)
        replays.append(replay)
    return replays


def audited(settings: dict, monkeypatch, frames: int = 5, warm: int = 3, sessions: int = 1,
            replay: bool = False, style: bool = False) -> Counter:
    """Host traffic of `frames` steady frames (after `warm`), of one session or several sharing runs."""
    from livediff.pipelines.batching import run_together

    settings = dict(dict(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32"), **settings)
    base = load_pipeline(**settings)
    pipes = [base] + [base.new_session(seed=9 + k) for k in range(1, sessions)]
    replays = []
    for pipe in pipes:
        pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.6)
        if style:
            pipe.set_style_image(torch.rand(3, 40, 48))
        if replay:
            replays += with_graph_replay(pipe)
    count = settings.get("frame_buffer_size", 1)
    txt2img = settings.get("mode") == "txt2img"
    traffic = HostTraffic()
    for i in range(warm + frames):
        inputs = [None if txt2img else torch.cat([frame(i + k + 7 * s) for k in range(count)])
                  for s in range(len(pipes))]
        with counting(traffic, monkeypatch) if i >= warm else nullcontext():
            if sessions == 1:
                pipes[0](inputs[0], output="tensor") if not txt2img else pipes[0](output="tensor")
            else:
                for outcome in run_together([p.frame_calls(x, output="tensor") for p, x in zip(pipes, inputs)]):
                    outcome.get()
    if replay:
        assert sum(r.replays for r in replays) >= frames  # steady calls really went through replays
    return traffic.seen


@pytest.mark.parametrize("cfg_type", ["none", "self", "full", "initialize"])
@pytest.mark.parametrize("frames", [1, 2])
def test_image_stream_reads_nothing_back(cfg_type, frames, monkeypatch):
    assert audited(dict(t_index_list=(20, 40), cfg_type=cfg_type, frame_buffer_size=frames), monkeypatch) == Counter()


def test_txt2img_reads_nothing_back(monkeypatch):
    assert audited(dict(mode="txt2img", t_index_list=(0, 30), cfg_type="self"), monkeypatch) == Counter()


@pytest.mark.parametrize("bank", [
    dict(merge=False, max_frames=2, cache_interval=2),            # FIFO, writing and non-writing frames
    dict(merge=True, max_frames=1, cache_interval=2),             # merged memory
    dict(merge=True, max_frames=2, cache_interval=1, sparse_keep_ratio=0.5),  # motion-guided sparse bank
    dict(merge=False, cache_interval=1, scene_cut_threshold=0.01),  # scene cuts firing on every frame
])
@pytest.mark.parametrize("cfg_type", ["self", "full"])
def test_video_stream_reads_nothing_back(bank, cfg_type, monkeypatch):
    assert audited(dict(mode="video", t_index_list=(20, 30, 40), cfg_type=cfg_type, bank=bank),
                   monkeypatch) == Counter()


def test_video_with_token_merging_reads_nothing_back(monkeypatch):
    assert audited(dict(mode="video", t_index_list=(20, 40), token_merge_ratio=0.5), monkeypatch) == Counter()


CONTROL = [dict(model="random", preprocessor="tile", scale=0.7)]
IP_ADAPTER = dict(model="random", image_encoder="random")


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_sdxl_controlnet_and_ip_adapter_read_nothing_back(mode, monkeypatch):
    """SDXL's added conditioning, a ControlNet's control images and scales, the IP-Adapter's image K/V:
    all laid out per row on the device."""
    settings = dict(model="tiny-sdxl", mode=mode, t_index_list=(20, 30, 40), cfg_type="initialize",
                    controlnet=CONTROL, ip_adapter=IP_ADAPTER)
    assert audited(settings, monkeypatch, style=True) == Counter()


def test_txt2img_with_ip_adapter_reads_nothing_back(monkeypatch):
    settings = dict(mode="txt2img", t_index_list=(0, 30), cfg_type="full", ip_adapter=IP_ADAPTER)
    assert audited(settings, monkeypatch, style=True) == Counter()


def test_canny_edges_are_made_from_host_pixels_not_read_back(monkeypatch):
    """A `pixels` preprocessor reads the pixels the caller passed, on the host before the upload; the
    device part uploads its uint8 edges and reads nothing back (canny once downloaded the frame)."""
    settings = dict(t_index_list=(20, 40), cfg_type="self", controlnet=[dict(model="random", preprocessor="canny")])
    assert audited(settings, monkeypatch, frames=2) == Counter()


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_sessions_sharing_runs_read_nothing_back(mode, monkeypatch):
    """`run_together`: stacking rows, splitting the outputs and each session's bank, on the host never."""
    settings = dict(mode=mode, t_index_list=(20, 30, 40), cfg_type="full", max_sessions=2, controlnet=CONTROL)
    assert audited(settings, monkeypatch, sessions=2) == Counter()


def test_causal_video_steady_chunks_read_nothing_back(monkeypatch):
    settings = CASES_BY_NAME["causal-video none"].settings()
    pipe = load_pipeline(**settings)
    pipe.prepare(prompt="claymation")
    traffic = HostTraffic()
    for i in range(13):  # chunks finish at frames 0, 4, 8, 12: the last two are steady
        with counting(traffic, monkeypatch) if i >= 5 else nullcontext():
            pipe(moving_frame(i), output="tensor")
    assert traffic.seen == Counter()


CASES_BY_NAME = {case.name: case for case in CASES}
#: one image case and one video case of the parity matrix (the matrix's files audit them on the graph
#: runners too, `audit_graph_runner`, after their graphs are in the shared cache)
GRAPH_CASES = ("txt2img, none", "video, initialize, bank sparse")


def audit_graph_runner(name: str, accelerator: str, monkeypatch, cache_dir) -> Counter:
    """The graph runners' own steps (input adaptation, checks, named outputs) on the audited path."""
    settings = dict(CASES_BY_NAME[name].settings(), accelerator=accelerator,
                    accelerator_options=dict(cache_dir=cache_dir))
    return audited(settings, monkeypatch)


@pytest.mark.parametrize("name", GRAPH_CASES)
def test_cuda_graph_replay_reads_nothing_back(name, monkeypatch):
    """(The causal transformer's graph runner, fixed addresses and capture: test_causal_graph_runner.py.)"""
    assert audited(CASES_BY_NAME[name].settings(), monkeypatch, replay=True) == Counter()


def test_the_audit_sees_a_host_read_inside_the_denoise_step(monkeypatch):
    """The counter itself works, and it looks inside the frame path: a stream step that reads a value
    back is caught (it once was not: the audit wrapped generators)."""
    from livediff.pipelines import stream

    finite = stream.finite
    monkeypatch.setattr(stream, "finite", lambda x: finite(x) if float(x.abs().max()) >= 0 else None)
    seen = audited(dict(t_index_list=(20, 40), cfg_type="self"), monkeypatch, frames=1)
    assert seen["__float__"] >= 1 and seen["aten._local_scalar_dense"] >= 1


def test_the_audit_sees_a_host_read_inside_a_runner(monkeypatch):
    pipe = load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32")
    pipe.prepare(prompt="a")
    inner = pipe.runners.decode
    pipe.runners.decode = lambda inputs: inner(inputs) if float(inputs["latents"].abs().max()) >= 0 else None
    traffic = HostTraffic()
    with counting(traffic, monkeypatch):
        pipe(frame(0), output="tensor")
    assert traffic.seen["__float__"] >= 1 and traffic.seen["aten._local_scalar_dense"] >= 1
