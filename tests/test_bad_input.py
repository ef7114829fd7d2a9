"""Streams survive bad frames and bad settings: wrong-typed arguments are named errors, a rejected
change leaves the pipeline exactly as it was, device/dtype are checked before loading, and one
non-finite frame or prediction does not poison a stream."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from livediff import load_pipeline
from livediff.errors import ConfigError, InputError

SIZE = 64


def tiny(**settings):
    base = dict(model="tiny", t_index_list=(20, 40), cfg_type="self", width=SIZE, height=SIZE, device="cpu",
                dtype="float32", seed=3)
    pipe = load_pipeline(**{**base, **settings})
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5)
    return pipe


def frame(i: int) -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(i))


# --- item 10: wrong types are named errors -----------------------------------------------------
@pytest.mark.parametrize("settings,message", [
    (dict(t_index_list=None), r"t_index_list None must be a list"),
    (dict(t_index_list=32), r"t_index_list 32 must be a list"),
    (dict(frame_buffer_size=True), r"frame_buffer_size True must be a whole number"),
    (dict(colour="red"), r"unknown setting\(s\) 'colour'; allowed: "),
    (dict(model=None), r"model None must be a string"),
    (dict(similarity_filter=0.9), r"similarity_filter 0.9 must be None or a dict"),
    (dict(similarity_filter={"thresh": 0.9}), r"unknown similarity filter option\(s\) 'thresh'"),
    (dict(similarity_filter={"threshold": "high"}), r"similarity threshold 'high' must be a number"),
    (dict(seed=2 ** 70), r"seed 1180591620717411303424 is outside 0..9223372036854775807"),
    (dict(device="foo"), r"device 'foo' is not a device"),
    (dict(dtype="float16"), r"dtype 'float16' is not supported on device 'cpu'"),
])
def test_bad_settings_are_config_errors_naming_the_value(settings, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**settings)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused_before_loading_and_auto_picks_the_cpu():
    with pytest.raises(ConfigError, match=r"device 'cuda' asked for, but this torch has no usable CUDA"):
        load_pipeline(model="someone/never-downloaded", device="cuda")
    pipe = load_pipeline(model="tiny", width=SIZE, height=SIZE)
    assert (pipe.config.device, pipe.config.dtype) == ("cpu", "float32")


@pytest.mark.parametrize("build, warned", [("12.8", True), (None, False)])
def test_auto_on_a_cuda_build_without_a_gpu_says_why_and_on_the_cpu_wheel_stays_quiet(monkeypatch, caplog, build,
                                                                                       warned):
    """A CUDA 13 torch on a CUDA 12.8 driver sees no GPU: `auto` used to become the CPU without a word."""
    from livediff.pipelines.config import resolve_device, warn_cuda_build_without_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", build)
    warn_cuda_build_without_gpu.cache_clear()
    with caplog.at_level("WARNING", logger="livediff.pipelines.config"):
        assert resolve_device("auto") == "cpu" and resolve_device("auto") == "cpu"
    sentences = [r.getMessage() for r in caplog.records]
    assert len(sentences) == int(warned)  # once per process, not per pipeline
    if warned:
        assert sentences[0].startswith(f"torch {torch.__version__} is built for CUDA 12.8 but sees no GPU, so "
                                       f"device 'auto' runs on the CPU: the NVIDIA driver is probably too old")
        assert "install a torch built for the CUDA your driver supports" in sentences[0]
    warn_cuda_build_without_gpu.cache_clear()


@pytest.mark.parametrize("call,error,message", [
    (lambda p: p.prepare(prompt=None), ConfigError, r"prompt None must be a string"),
    (lambda p: p.prepare(prompt=123), ConfigError, r"prompt 123 must be a string"),
    (lambda p: p.prepare(prompt="a", guidance_scale="1.2"), ConfigError, r"guidance_scale '1.2' must be a number"),
    (lambda p: p.update_prompt(["a", "b"]), ConfigError, r"prompt \['a', 'b'\] must be a string"),
    (lambda p: p.set_strength("0.5"), ConfigError, r"strength '0.5' must be a number"),
    (lambda p: p(frame(0) * 255), InputError, r"values from 0.0\d+ to 254.\d+; float tensors must be in \[0, 1\]"),
    (lambda p: p(torch.full((1, 3, SIZE, SIZE), float("nan"))), InputError, r"NaN or infinite"),
])
def test_bad_calls_are_named_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(tiny())


def test_frames_of_mixed_kinds_are_refused():
    pipe = tiny(frame_buffer_size=2)
    picture = Image.new("RGB", (SIZE, SIZE))
    with pytest.raises(InputError, match="the frames mix PIL images, arrays"):
        pipe([picture, np.zeros((SIZE, SIZE, 3), np.uint8)])


# --- item 8: a rejected change leaves the pipeline exactly as it was ------------------------------
REJECTED = {
    "seed too large": lambda p: p.set_seed(2 ** 70),
    "negative seed": lambda p: p.set_seed(-1),
    "seed as text": lambda p: p.set_seed("3"),
    "strength 0": lambda p: p.set_strength(0),
    "strength as text": lambda p: p.set_strength("x"),
    "decreasing stages": lambda p: p.set_t_index_list([45, 30]),
    "no stages": lambda p: p.set_t_index_list(None),
    "guidance too large": lambda p: p.set_guidance(guidance_scale=50),
    "unknown cfg type": lambda p: p.set_guidance(guidance_scale=2.0, cfg_type="bogus"),
    "delta as text": lambda p: p.set_guidance(delta="a"),
    "similarity threshold 2": lambda p: p.set_similarity_filter(2.0),
    "negative max_skip": lambda p: p.set_similarity_filter(0.9, max_skip=-1),
    "prompt None": lambda p: p.update_prompt(None),
    "prompt list": lambda p: p.update_prompt(["a"]),
    "negative prompt number": lambda p: p.update_prompt("b", negative_prompt=7),
    "prepare with a number": lambda p: p.prepare(prompt=5),
    "unknown session setting": lambda p: p.new_session(colour=1),
}


def state(pipe) -> tuple:
    g = pipe.guidance
    return (pipe.settings, pipe.prompt, pipe.negative_prompt, g.cfg_type, g.guidance_scale, g.delta,
            [t.clone() for t in g.cond.inputs.values()], [t.clone() for t in g.uncond.inputs.values()])


@pytest.mark.parametrize("name", REJECTED)
def test_a_rejected_change_leaves_the_stream_exactly_as_it_was(name):
    changed, untouched = tiny(), tiny()
    for i in range(2):
        changed(frame(i)), untouched(frame(i))
    before = state(changed)
    with pytest.raises(ConfigError):
        REJECTED[name](changed)
    after = state(changed)
    assert after[:6] == before[:6]
    for now, then in zip(after[6] + after[7], before[6] + before[7]):
        assert torch.equal(now, then)
    for i in range(2, 5):
        assert torch.equal(changed(frame(i)), untouched(frame(i)))
    changed.reset(), changed.set_strength(0.5), changed.set_seed(4)  # still usable
    assert changed.new_session().settings.seed == 3


# --- item 7: non-finite values do not persist -------------------------------------------------
class NaNOnce:
    """Wraps a backend's runner (`NamedRunner.run`): the `at`-th call returns NaN everywhere (as an fp16 overflow would)."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def __call__(self, *inputs):
        outputs = self.inner(*inputs)
        self.calls += 1
        if self.calls != self.at:
            return outputs
        return outputs.map(lambda t: torch.full_like(t, float("nan")))

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("cfg_type", ["self", "initialize", "full"])
def test_a_nan_prediction_leaves_an_image_stream_after_n_frames(cfg_type):
    poisoned, reference = tiny(cfg_type=cfg_type), tiny(cfg_type=cfg_type)
    poisoned.runners.unet = replace(poisoned.runners.unet, run=NaNOnce(poisoned.runners.unet.run, at=4))
    outputs = [(poisoned(frame(i)), reference(frame(i))) for i in range(8)]
    assert all(torch.isfinite(got).all() for got, _ in outputs)
    steps = len(poisoned.settings.t_index_list)
    # the NaN call is frame 3's (the first frame's call also warms the buffer); n frames later the
    # stream holds only frames that entered after it, and is exactly the reference again
    assert not torch.equal(*outputs[3])
    for got, want in outputs[3 + steps:]:
        assert torch.equal(got, want)


@pytest.mark.parametrize("bank", [dict(merge=False, max_frames=1, cache_interval=1), dict(merge=True)])
def test_a_nan_prediction_does_not_poison_the_feature_bank(bank):
    pipe = tiny(mode="video", bank=bank)
    pipe.banked_unet_runner = replace(pipe.banked_unet_runner, run=NaNOnce(pipe.banked_unet_runner.run, at=3))
    outputs = [pipe(frame(i)) for i in range(8)]
    assert all(torch.isfinite(out).all() for out in outputs)
    for tensor in pipe.bank.tensors():
        assert not torch.isnan(tensor).any() and not torch.isposinf(tensor).any()


class PoisonRows:
    """Wraps a runner: at chosen calls, one row of the prediction is NaN everywhere or has one +inf value."""

    def __init__(self, inner, nan_row: dict[int, int], inf_value: dict[int, int]):
        self.inner, self.nan_row, self.inf_value, self.calls = inner, nan_row, inf_value, 0

    def __call__(self, *inputs):
        self.calls += 1

        def poison(t: torch.Tensor) -> torch.Tensor:
            t = t.clone()
            if self.calls in self.nan_row:
                t[self.nan_row[self.calls]] = float("nan")
            if self.calls in self.inf_value:
                t[self.inf_value[self.calls], 0, 0, 0] = float("inf")
            return t

        return self.inner(*inputs).map(poison)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_zeroed_non_finite_values_are_counted_on_the_device_and_the_stream_goes_on():
    """Issue 26, defect 8: one call's row 1 all NaN, a later call's row 0 with one +inf. The count (a
    device tensor; read here, as a stats display reads it) says how many values were zeroed and in how
    many frame-stages (rows); the stream keeps delivering finite frames."""
    pipe = tiny(cfg_type="self")
    pipe.runners.unet = PoisonRows(pipe.runners.unet, nan_row={3: 1}, inf_value={5: 0})
    assert pipe.nonfinite.counts.device == pipe.device and pipe.nonfinite.read() == (0, 0)
    outputs = [pipe(frame(i)) for i in range(8)]
    assert all(torch.isfinite(out).all() for out in outputs)
    channels, height, width = pipe.latent_shape
    assert pipe.nonfinite.read() == (channels * height * width + 1, 2)
    assert pipe.nonfinite.read().format() == f"{channels * height * width + 1} non-finite values zeroed in 2 frame-stages"
    pipe.reset()  # a new stream of the same pipeline: the count goes on
    pipe(frame(0))
    assert pipe.nonfinite.read().frame_stages == 2
