"""GPU dry run without a GPU: every pipeline runs in float16 on PyTorch's `meta` device, which holds
no data. Mixing it with a CPU tensor raises, and so does any read of a value (`.item()`, `bool(t)`,
`float(t)`, `.cpu()`), exactly the mistakes that break or stall a GPU run. Each network call is
checked to get meta float16 inputs. The similarity filter (one read per frame, by design) is left out.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from livediff import load_pipeline

SIZE = 64


class Checked:
    """Wraps a runner: every tensor it gets must be on meta, floating ones in float16."""

    def __init__(self, inner, calls: list):
        self.inner, self.calls = inner, calls

    def __call__(self, inputs):
        for tensor in inputs.values():
            assert tensor.device.type == "meta", tensor.device
            assert not tensor.is_floating_point() or tensor.dtype in (torch.float16, torch.float32), tensor.dtype
        self.calls.append(tuple(t.dtype for t in inputs.values()))
        return self.inner(inputs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def dry_run(steps: int = 4, frames: int = 1, model: str = "tiny", **settings) -> list:
    pipe = load_pipeline(model=model, width=SIZE, height=SIZE, device="meta", dtype="float16", **settings)
    calls: list = []
    for name in ("unet", "encode", "decode"):
        if getattr(pipe.runners, name) is not None:
            setattr(pipe.runners, name, Checked(getattr(pipe.runners, name), calls))
    if hasattr(pipe, "banked_unet_runner"):
        pipe.banked_unet_runner = Checked(pipe.banked_unet_runner, calls)
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.6)
    if settings.get("ip_adapter"):  # the user's picture is read on the host once; its K/V are made on the device
        pipe.set_style_image(torch.rand(3, 40, 48))
    txt2img = settings.get("mode") == "txt2img"

    def frame():
        images = torch.rand(frames, 3, SIZE, SIZE, device="meta")
        return list(images) if frames > 1 else images

    for i in range(steps):
        out = pipe(output="tensor") if txt2img else pipe(frame(), output="tensor")
        for picture in (out if isinstance(out, list) else [out]):
            assert picture.device.type == "meta" and picture.shape[-2:] == (SIZE, SIZE)
        if i == 1:
            pipe.update_prompt("watercolor")
        if i == 2:
            pipe.set_strength(0.6)
    pipe.reset()
    other = pipe.new_session()
    other.prepare(prompt="claymation")
    other(output="tensor") if txt2img else other(frame(), output="tensor")
    assert calls and all(torch.float16 in dtypes for dtypes in calls)  # the networks ran in float16
    return calls


@pytest.mark.parametrize("cfg_type", ["none", "self", "full", "initialize"])
@pytest.mark.parametrize("frames", [1, 2])
def test_image_stream_dry_run(cfg_type, frames):
    dry_run(mode="img2img", t_index_list=(20, 40), cfg_type=cfg_type, frame_buffer_size=frames, frames=frames)


def test_txt2img_dry_run():
    dry_run(mode="txt2img", t_index_list=(0, 30))


@pytest.mark.parametrize("bank,ratio", [
    (dict(merge=False, max_frames=2, cache_interval=2), 0.0),     # FIFO
    (dict(merge=True, max_frames=1, cache_interval=1), 0.0),      # merged memory
    (dict(sparse_keep_ratio=0.5, cache_interval=1), 0.0),         # motion-guided sparse bank
    (dict(scene_cut_threshold=0.01, fusion_strength=0.8), 0.5),   # scene cuts, fusion, token merging
    (False, 0.5),                                                 # token merging alone
])
def test_video_stream_dry_run(bank, ratio):
    dry_run(mode="video", t_index_list=(20, 30, 40), cfg_type="full", bank=bank, token_merge_ratio=ratio)


@pytest.mark.parametrize("mode", ["img2img", "txt2img", "video"])
def test_sdxl_dry_run(mode):
    """SDXL's added conditioning (pooled text, size ids) is made and laid out on the device too."""
    calls = dry_run(model="tiny-sdxl", mode=mode, t_index_list=(20, 30, 40) if mode != "txt2img" else (0, 30),
                    cfg_type="full")
    assert max(len(dtypes) for dtypes in calls) >= 5  # sample, timestep, text, text_embeds, time_ids (+ bank)


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_controlnet_dry_run(mode):
    """Control images travel with their frames and the scales stay on the device (the `tile`
    preprocessor: `canny` is a host step by design)."""
    calls = dry_run(mode=mode, t_index_list=(20, 30, 40), cfg_type="initialize",
                    controlnet=[dict(model="random", preprocessor="tile", scale=0.7)])
    assert max(len(dtypes) for dtypes in calls) >= 5  # sample, timestep, text, control image, scales


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_sessions_sharing_runs_dry_run(mode):
    """`run_together` (the UI's batches): stacking rows, padding and the stacked prompt caches stay on
    the device, and the shared runs really carry both sessions' rows."""
    from livediff.pipelines.batching import run_together

    base = load_pipeline(model="tiny", width=SIZE, height=SIZE, device="meta", dtype="float16", mode=mode,
                         t_index_list=(20, 30, 40))
    calls: list = []
    sessions = [base.new_session(cfg_type="full"), base.new_session(seed=5)]
    for pipe in sessions:
        pipe.prepare(prompt="oil painting", guidance_scale=1.6)
        for name in ("unet", "encode", "decode"):
            if getattr(pipe.runners, name) is not None and not isinstance(getattr(pipe.runners, name), Checked):
                setattr(pipe.runners, name, Checked(getattr(pipe.runners, name), calls))
        if mode == "video":
            pipe.banked_unet_runner = Checked(pipe.banked_unet_runner, calls)
    sizes = []
    for _ in range(3):
        paths = [p.frame_calls(torch.rand(1, 3, SIZE, SIZE, device="meta"), output="tensor") for p in sessions]
        outcomes = run_together(paths, on_run=lambda report: sizes.append(report.sessions))
        assert all(o.get().device.type == "meta" for o in outcomes)
    assert calls and max(sizes) == 2


def test_a_host_read_fails_the_dry_run():
    """The meta device really catches what a GPU run would stall on."""
    with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):
        float(torch.ones(2, device="meta").sum())
    with pytest.raises(RuntimeError, match="meta"):
        torch.ones(2, device="meta") + torch.ones(2)  # a CPU tensor mixed in


@pytest.mark.parametrize("mode", ["img2img", "txt2img", "video"])
def test_ip_adapter_dry_run(mode):
    calls = dry_run(mode=mode, t_index_list=(20, 30, 40) if mode != "txt2img" else (0, 30), cfg_type="full",
                    ip_adapter=dict(model="random", image_encoder="random"))
    assert max(len(dtypes) for dtypes in calls) >= 3 + 2 * 4  # + key and value of the tiny UNet's cross layers


def test_causal_video_dry_run(monkeypatch):
    """Everything per chunk (VAE streams, noise, the transformer with its rolling cache, decode) on
    meta in float16, across a sliding window, a prompt change and the final flush. The text encoder
    runs once per prompt and transformers reads its padding mask on the host there (by design, like
    the tokenizer), so the embeddings are given on meta here."""
    from livediff.pipelines.causal.pipeline import CausalVideoPipeline

    def encode(self, prompt):
        width = self.models.transformer.config.text_dim
        return torch.zeros(1, self.text_tokens, width, device="meta", dtype=self.dtype)

    monkeypatch.setattr(CausalVideoPipeline, "encode_prompt", encode)
    pipe = load_pipeline(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="meta",
                         dtype="float16", t_index_list=[20, 40], causal=dict(chunk_frames=1, sink_chunks=1,
                                                                              window_chunks=1))
    pipe.prepare(prompt="claymation")
    finished = []
    for i in range(17):
        finished += pipe(torch.rand(1, 3, SIZE, SIZE, device="meta"), output="tensor")
        if i == 12:
            pipe.update_prompt("watercolor")
    finished += pipe.flush()
    assert len(finished) == 17
    assert {(f.device.type, tuple(f.shape[-2:])) for f in finished} == {("meta", (SIZE, SIZE))}
    assert pipe.models.transformer.dtype == torch.float16  # the video VAE runs in float32, as diffusers' Wan


# --- the graph runners' own code paths on the meta device ------------------------------------------
class RecordingBinding:
    """ONNX Runtime's IO binding as `OnnxRuntimeRunner._run_on_device` uses it: records what is bound."""

    def __init__(self):
        self.inputs, self.outputs = {}, {}

    def bind_input(self, name, device, index, element, shape, pointer):
        self.inputs[name] = (tuple(shape), element)

    def bind_output(self, name, device, index, element, shape, pointer):
        self.outputs[name] = (tuple(shape), element)


class ShapeCheckingSession:
    """Stands in for an InferenceSession on the GPU: the function itself, run on meta tensors of the
    bound inputs' shapes and types, must give exactly the output shapes and types the runner bound
    (which it allocated from `function.output_shapes`, as on a GPU)."""

    def __init__(self, function, runs: list):
        self.function, self.runs = function, runs

    def io_binding(self):
        return RecordingBinding()

    def run_with_iobinding(self, binding, options):
        import numpy as np

        inputs = [torch.empty(shape, dtype=torch.from_numpy(np.empty(0, element)).dtype, device="meta")
                  for shape, element in (binding.inputs[name] for name in self.function.input_names)]
        with torch.no_grad():
            expected = self.function(*inputs)
        expected = (expected,) if isinstance(expected, torch.Tensor) else expected
        bound = [binding.outputs[name] for name in self.function.output_names]
        for name, tensor, (shape, element) in zip(self.function.output_names, expected, bound):
            assert tuple(tensor.shape) == shape, (self.function.name, name, tensor.shape, shape)
            assert np.dtype(element) == torch.empty(0, dtype=tensor.dtype).numpy().dtype, (name, element)
        self.runs.append(self.function.name)


def onnxruntime_on_meta(runner, runs: list):
    """The ONNX Runtime runner itself (input adaptation and checks, IO binding, output allocation and
    naming) over `runner`'s function, on meta, with `ShapeCheckingSession` in place of the GPU session
    and the input and output types of the function's float16 graph (test_graph_matrix checks those)."""
    from livediff.accelerators.onnxruntime_backend import OnnxRuntimeRunner

    stand_in = object.__new__(OnnxRuntimeRunner)
    function = runner.function
    stand_in.function, stand_in.device, stand_in.run_options = function, torch.device("meta"), None
    stand_in.session = ShapeCheckingSession(function, runs)
    stand_in.input_types = [torch.float32 if name == "timestep" else torch.float16 for name in function.input_names]
    stand_in.output_types = [torch.float16] * len(function.output_names)
    return stand_in


@pytest.mark.parametrize("runner", ["onnxruntime device path", "CUDA-graph replay"])
@pytest.mark.parametrize("settings", [
    dict(mode="img2img", t_index_list=(20, 40), cfg_type="initialize", frame_buffer_size=2, frames=2),
    dict(mode="txt2img", t_index_list=(0, 30), cfg_type="full"),
    dict(mode="video", t_index_list=(20, 30, 40), cfg_type="full",
         bank=dict(merge=True, max_frames=2, cache_interval=1, sparse_keep_ratio=0.5)),
    dict(mode="video", t_index_list=(20, 40), cfg_type="self", bank=False, token_merge_ratio=0.5),
    dict(model="tiny-sdxl", mode="video", t_index_list=(20, 40), cfg_type="initialize",
         controlnet=[dict(model="random", preprocessor="tile")],
         ip_adapter=dict(model="random", image_encoder="random")),
], ids=["img2img", "txt2img", "video sparse bank", "video token merging alone", "sdxl video conditioning"])
def test_graph_runner_code_paths_dry_run(settings, runner, monkeypatch):
    """Every network call of a stream through a graph runner's own code on meta in float16: ONNX
    Runtime's device path (its output shapes checked against the function) or the `compile` runner's
    CUDA-graph replay with the CPU stand-in for capture (`test_accelerators.GraphedRunner`)."""
    from test_accelerators import GraphedRunner

    runs: list = []
    replays: list = []
    original = load_pipeline

    def load(**kwargs):
        pipe = original(**kwargs)
        for name in ("unet", "encode", "decode", "banked_unet_runner"):
            owner = pipe if name == "banked_unet_runner" else pipe.runners
            named = getattr(owner, name, None)
            if named is None:
                continue
            if runner == "CUDA-graph replay":
                inner = GraphedRunner(named.function, None, named.function.state_inputs())
                replays.append(inner)
            else:
                inner = onnxruntime_on_meta(named, runs)
            setattr(owner, name, replace(named, run=inner))
        return pipe

    monkeypatch.setitem(globals(), "load_pipeline", load)
    settings = dict(settings)
    dry_run(steps=4, frames=settings.pop("frames", 1), **settings)
    if runner == "CUDA-graph replay":
        assert sum(r.replays for r in replays) >= 4
    else:
        assert {"vae_decoder"} <= set(runs) and len(runs) >= 8
