"""Several sessions advanced together (`pipelines.batching.run_together`) give each session exactly
what it gets alone, in float64 within 1e-9, for mixed settings, joins and leaves; and they really
share network runs."""
from __future__ import annotations

import pytest
import torch

from livediff.errors import ConfigError
from livediff.network_inputs import NetworkInputs
from livediff.pipelines import load_pipeline
from livediff.pipelines.batching import DECODE, DENOISE, ENCODE, padded_rows, run_together
from livediff.pipelines.models import resolve_dtype

SIZE = 64
FRAMES = 7


def template(mode: str, **overrides):
    settings = dict(model="tiny", mode=mode, t_index_list=[20, 30, 40], cfg_type="self", width=SIZE, height=SIZE,
                    device="cpu", dtype="float64", seed=0)
    settings.update(overrides)
    return load_pipeline(**settings)


def frame(i: int) -> torch.Tensor:
    """A panning texture; frames 3 and 4 repeat frame 2 (so a similarity filter has something to skip)."""
    i = min(i, 2) if i in (3, 4) else i
    texture = torch.rand(3, SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return texture[:, :, 3 * i:3 * i + SIZE].clone()


def session(base, spec: dict):
    """A new session of `base` set up from `spec` (config overrides, prompt, live settings)."""
    spec = dict(spec)
    prompt = spec.pop("prompt")
    guidance = spec.pop("guidance_scale", 1.4)
    filter_threshold = spec.pop("similarity", None)
    strength = spec.pop("strength", None)
    pipe = base.new_session(**spec)
    pipe.prepare(prompt=prompt, negative_prompt="blurry", guidance_scale=guidance, delta=0.7)
    if filter_threshold is not None:
        pipe.set_similarity_filter(filter_threshold, max_skip=3)
    if strength is not None:
        pipe.set_strength(strength)
    return pipe


def run_schedule(base, specs: dict, lifetimes: dict, batched: bool, reports: list | None = None):
    """Outputs per session name: batched, every present session's frame i in one `run_together`;
    alone, each session on its own. `lifetimes[name]` = (first frame, last frame + 1)."""
    pipes = {name: session(base, spec) for name, spec in specs.items()}
    outputs = {name: [] for name in specs}
    if batched:
        for i in range(FRAMES):
            present = [name for name in specs if lifetimes[name][0] <= i < lifetimes[name][1]]
            paths = [pipes[name].frame_calls(None if pipes[name].config.mode == "txt2img" else frame(i),
                                             output="tensor") for name in present]
            for name, outcome in zip(present, run_together(paths, on_run=reports.append if reports is not None
                                                            else None)):
                outputs[name].append(outcome.get())
    else:
        for name, pipe in pipes.items():
            for i in range(*lifetimes[name]):
                outputs[name].append(pipe(None if pipe.config.mode == "txt2img" else frame(i), output="tensor"))
    return outputs


def assert_batched_equals_alone(mode: str, specs: dict, lifetimes: dict) -> list:
    """Run the schedule batched and alone over one template; the reports of the batched run's network runs."""
    base = template(mode)
    reports = []
    batched = run_schedule(base, specs, lifetimes, batched=True, reports=reports)
    alone = run_schedule(base, specs, lifetimes, batched=False)
    assert_same(batched, alone)
    return reports


def assert_same(batched: dict, alone: dict) -> None:
    for name in alone:
        assert len(batched[name]) == len(alone[name]) > 0
        for b, a in zip(batched[name], alone[name]):
            assert b.dtype == torch.float64
            assert (b - a).abs().max().item() < 1e-9, name


IMAGE_SPECS = {
    "self": dict(prompt="oil painting", seed=1),
    "full": dict(prompt="claymation", cfg_type="full", seed=2, guidance_scale=1.8),
    "initialize-filtered": dict(prompt="watercolour", cfg_type="initialize", seed=3, similarity=0.9),
    "none-two-steps": dict(prompt="pencil sketch", cfg_type="none", seed=4, strength=0.5),
    "one-step": dict(prompt="neon", seed=6, t_index_list=[25]),
    "txt2img": dict(prompt="a cat", mode="txt2img", seed=7),
}
IMAGE_LIFETIMES = {"self": (0, FRAMES), "full": (0, 5), "initialize-filtered": (0, FRAMES),
                   "none-two-steps": (2, FRAMES), "one-step": (1, 6), "txt2img": (0, FRAMES)}


def test_mixed_image_sessions_batched_equal_each_session_alone_and_share_runs():
    reports = assert_batched_equals_alone("img2img", IMAGE_SPECS, IMAGE_LIFETIMES)
    shared = [r for r in reports if r.sessions > 1]
    assert {r.stage for r in shared} == {ENCODE, DENOISE, DECODE}
    assert max(r.sessions for r in reports if r.stage == DENOISE) >= 5


def test_the_similarity_filter_skips_inside_a_batch_without_a_network_call():
    base = template("img2img")
    specs = {"filtered": dict(prompt="oil painting", seed=1, similarity=0.9)}
    reports = []
    batched = run_schedule(base, specs, {"filtered": (0, FRAMES)}, batched=True, reports=reports)
    encodes = sum(1 for r in reports if r.stage == ENCODE)
    assert encodes < FRAMES  # repeated frames reused the last picture
    assert batched["filtered"][3] is batched["filtered"][2]


VIDEO_SPECS = {
    "fifo": dict(prompt="oil painting", seed=1, bank=dict(merge=False)),
    "merged-full": dict(prompt="claymation", cfg_type="full", seed=2, bank=dict(merge=True)),
    "initialize": dict(prompt="watercolour", cfg_type="initialize", seed=3),
    "two-steps": dict(prompt="pencil sketch", cfg_type="none", seed=4, strength=0.5),
    "no-bank": dict(prompt="neon", seed=5, bank=False),
}
VIDEO_LIFETIMES = {"fifo": (0, FRAMES), "merged-full": (0, 5), "initialize": (1, FRAMES), "two-steps": (0, FRAMES),
                   "no-bank": (2, FRAMES)}


def test_mixed_video_sessions_with_banks_batched_equal_each_session_alone():
    reports = assert_batched_equals_alone("video", VIDEO_SPECS, VIDEO_LIFETIMES)
    # the banked sessions share UNet runs; the session without a bank has another function
    assert max(r.sessions for r in reports if r.stage == DENOISE) >= 3


def test_a_failing_session_does_not_stop_the_others():
    base = template("img2img")
    good = session(base, dict(prompt="oil painting", seed=1))
    unprepared = base.new_session()
    outcomes = run_together([good.frame_calls(frame(0), output="tensor"),
                             unprepared.frame_calls(frame(0), output="tensor")])
    assert outcomes[0].error is None and outcomes[0].value.shape[-3:] == (3, SIZE, SIZE)
    assert isinstance(outcomes[1].error, ConfigError)
    with pytest.raises(ConfigError, match="no prompt"):
        outcomes[1].get()


def test_float64_is_refused_off_the_cpu():
    with pytest.raises(ConfigError, match="float64.*reference"):
        resolve_dtype("float64", "cuda")


def test_padded_rows_are_a_power_of_two_of_the_unit():
    assert [padded_rows(r, 2) for r in (1, 2, 3, 4, 5, 8, 9, 16)] == [2, 2, 4, 4, 8, 8, 16, 16]
    assert padded_rows(7, 0) == 7


def test_on_a_backend_that_compiles_per_row_count_shared_runs_are_padded_and_still_exact(monkeypatch):
    """`static_rows` backends (compile, openvino) get a few row counts; the padding changes no session."""
    base = template("video")
    monkeypatch.setattr(base.runners.backend, "static_rows", True, raising=False)
    seen: list[int] = []
    runner = base.banked_unet_runner

    def recording(inputs):
        seen.append(inputs.rows)
        return runner(inputs)

    specs = {k: VIDEO_SPECS[k] for k in ("fifo", "merged-full", "initialize", "two-steps")}
    lifetimes = {k: VIDEO_LIFETIMES[k] for k in specs}
    from livediff.pipelines import video_pipeline

    original = video_pipeline.VideoPipeline.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.banked_unet_runner = recording

    monkeypatch.setattr(video_pipeline.VideoPipeline, "__init__", init)
    batched = run_schedule(base, specs, lifetimes, batched=True)
    shared = list(seen)
    alone = run_schedule(base, specs, lifetimes, batched=False)
    assert_same(batched, alone)
    # a session alone keeps its own row counts (at most 6: 3 stages with full CFG); shared runs land on
    # a unit (the largest session's rows: 3, 4 with initialize, 6 with full CFG) times a power of two
    allowed = {u * 2 ** k for u in (3, 4, 6) for k in range(4)} | set(range(1, 7))
    assert set(shared) <= allowed and max(shared) == 24


def test_shared_runs_of_video_sessions_project_no_text():
    """Each session's text K/V are projected once per prompt (by its prompt encoder), never by a run,
    in company as alone."""
    base = template("video")
    a = session(base, dict(prompt="oil painting", seed=1))
    b = session(base, dict(prompt="claymation", seed=2, cfg_type="full"))
    key_weights = {id(m.weight) for name, m in a.models.unet.named_modules() if name.endswith("attn2.to_k")}
    projections = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: projections.append(1) if id(getattr(module, "weight", None)) in key_weights else None)
    try:
        for i in range(3):
            outcomes = run_together([a.frame_calls(frame(i), output="tensor"),
                                     b.frame_calls(frame(i), output="tensor")])
            assert all(o.error is None for o in outcomes)
        assert projections == []
        b.update_prompt("watercolour")
        assert len(projections) == len(key_weights)  # the new prompt, once, every layer
        run_together([a.frame_calls(frame(3), output="tensor"), b.frame_calls(frame(3), output="tensor")])
        assert len(projections) == len(key_weights)
    finally:
        handle.remove()


def test_a_failing_network_run_ends_every_path_in_it_and_only_those():
    from livediff.pipelines.batching import NetworkCall

    def broken(inputs):
        raise RuntimeError("device lost")

    def path(runner, group, value):
        out = yield NetworkCall(DENOISE, group, runner, NetworkInputs({"x": torch.full((1, 2), value)}))
        return out

    outcomes = run_together([path(broken, "broken", 1.0), path(broken, "broken", 2.0),
                             path(lambda inputs: 3 * inputs["x"], "fine", 1.0)])
    assert [type(o.error) for o in outcomes[:2]] == [RuntimeError, RuntimeError]
    assert outcomes[2].error is None and torch.equal(outcomes[2].value, torch.full((1, 2), 3.0))
