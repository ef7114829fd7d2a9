"""The video pipeline end to end on the tiny preset: equal to the image pipeline without the bank,
row/stage handling for every CFG mode and warm-up, reset, scene cuts, prompt changes, options."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from livediff.pipelines import load_pipeline
from livediff.pipelines.bank.config import BankConfig
from livediff.pipelines.bank.layout import attention_layers
from livediff.pipelines.config import StreamConfig
from livediff.errors import ConfigError
from livediff.pipelines.token_merge import merged_count
from livediff.pipelines.video_pipeline import VideoPipeline

SIZE = 64


def build(mode="video", **overrides):
    settings = dict(model="tiny", mode=mode, t_index_list=[20, 30, 40], cfg_type="self", width=SIZE, height=SIZE,
                    device="cpu", dtype="float32", seed=2)
    settings.update(overrides)
    pipe = load_pipeline(**settings)
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5, delta=0.5)
    return pipe


def scene(i: int, seed: int = 0) -> torch.Tensor:
    """Frame i of a panning random texture with a bright square moving across (a (3, H, W) tensor in [0, 1])."""
    texture = torch.rand(3, SIZE, 2 * SIZE, generator=torch.Generator().manual_seed(seed))
    frame = texture[:, :, 2 * i:2 * i + SIZE].clone()
    frame[:, 20:36, 3 * i:3 * i + 16] = 1.0
    return frame


def run(pipe, frames):
    return [pipe(f) for f in frames]


def test_video_mode_builds_the_video_pipeline_with_the_method_defaults():
    pipe = build()
    assert isinstance(pipe, VideoPipeline) and pipe.config.bank == BankConfig() and pipe.bank is not None
    first_up = next(i for i, block in enumerate(pipe.models.unet.up_blocks) if getattr(block, "attentions", None))
    assert pipe.fusion_blocks == ("mid_block", f"up_blocks.{first_up}")  # the method's default
    off = build(bank=False)
    assert off.bank is None and off.config.bank is False


@pytest.mark.parametrize("cfg_type", ["none", "full", "self", "initialize"])
def test_bank_disabled_gives_exactly_the_image_pipeline_outputs(cfg_type):
    frames = [scene(i) for i in range(5)]
    image = run(build(mode="img2img", cfg_type=cfg_type), frames)
    video = run(build(bank=False, cfg_type=cfg_type), frames)
    assert all(torch.equal(a, b) for a, b in zip(image, video))


def test_bank_changes_later_frames_but_not_the_first():
    frames = [scene(i) for i in range(6)]
    image = run(build(mode="img2img"), frames)
    video = run(build(bank=dict(cache_interval=1)), frames)
    torch.testing.assert_close(video[0], image[0], rtol=0, atol=1e-5)  # nothing banked yet
    assert (video[-1] - image[-1]).abs().max() > 1e-3


def test_reset_makes_the_next_outputs_equal_a_fresh_pipeline():
    frames = [scene(i) for i in range(8)]
    pipe = build(bank=dict(cache_interval=1, max_frames=2, merge=True))
    run(pipe, frames[:6])
    pipe.reset()
    assert pipe.bank.stored_frames == 0
    again = run(pipe, frames[4:])
    fresh = run(build(bank=dict(cache_interval=1, max_frames=2, merge=True)), frames[4:])
    assert all(torch.equal(a, b) for a, b in zip(again, fresh))


def test_cache_interval_counts_processed_frames():
    pipe = build(bank=dict(cache_interval=2, max_frames=4, merge=False))
    run(pipe, [scene(i) for i in range(5)])
    assert pipe.bank.stored_frames == 3  # frames 0, 2, 4


def test_fifo_bank_holds_max_frames_and_every_stage_after_warm_up():
    pipe = build(bank=dict(cache_interval=1, max_frames=2, merge=False))
    pipe(scene(0))
    _, _, bias, *_ = pipe.bank.tensors()
    tokens = bias.shape[1] // 2
    assert torch.isfinite(bias[:, :tokens]).all() and torch.isneginf(bias[:, tokens:]).all()  # all 3 stages
    run(pipe, [scene(i) for i in range(1, 5)])
    assert torch.isfinite(pipe.bank.tensors()[2]).all()
    assert min(pipe.bank.stored_frames, pipe.bank.config.max_frames) == 2


class Recorder:
    """Wraps the banked UNet runner to keep every call's inputs (as they were: the steady call reads
    the bank's storage, which later writes change) and outputs."""

    def __init__(self, pipe):
        self.inner, self.calls = pipe.banked_unet_runner, []
        pipe.banked_unet_runner = self

    def __call__(self, inputs):
        outputs = self.inner(inputs)
        self.calls.append(({name: t.clone() for name, t in inputs.items()}, outputs))
        return outputs

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("cfg_type,frames", [("full", 1), ("initialize", 2), ("self", 2)])
def test_only_conditional_stream_rows_write_and_every_row_reads_its_stage(cfg_type, frames):
    pipe = build(cfg_type=cfg_type, frame_buffer_size=frames, bank=dict(cache_interval=1, max_frames=frames,
                                                                        merge=False))
    recorder = Recorder(pipe)
    pipe([scene(i) for i in range(frames)] if frames > 1 else scene(0))
    inputs, outputs = recorder.calls[-1]
    sample = inputs["sample"]
    k_new = outputs[pipe.bank_output_names[0]]
    stages, extra = 3, sample.shape[0] - 3 * frames
    steady = pipe.bank.steady  # the bank keeps a row per row of the steady call; its stream rows per stage:
    banked_k = pipe.bank.tensors()[0][[steady.stages.index(s, steady.extra) for s in range(stages)]]
    tokens = k_new.shape[1]
    for s in range(stages):
        for f in range(frames):
            assert torch.equal(banked_k[s, f * tokens:(f + 1) * tokens], k_new[extra + s * frames + f])
    pipe([scene(i + 1) for i in range(frames)] if frames > 1 else scene(1))
    inputs, _ = recorder.calls[-1]
    sample, timestep = inputs["sample"], inputs["timestep"]
    k_in = inputs["kv0.k"]  # the first self-attention layer's banked keys
    stage_of = {int(t): s for s, t in enumerate(pipe.schedule.timesteps)}
    for row in range(sample.shape[0]):
        assert torch.equal(k_in[row], banked_k[stage_of[int(timestep[row])]])


def test_scene_cut_empties_the_bank_before_the_new_scene_is_denoised():
    def banked_frames(pipe) -> int:
        bias = pipe.bank.tensors()[2]  # the first self-attention layer's slot biases, (stages, slots)
        return int(torch.isfinite(bias[0]).sum()) // (bias.shape[1] // pipe.bank_config.max_frames)

    pipe = build(bank=dict(cache_interval=1, max_frames=3, merge=False, scene_cut_threshold=0.5))
    run(pipe, [scene(i) for i in range(4)])
    assert int(pipe.scene_cuts) == 0 and banked_frames(pipe) == 3
    pipe(scene(0, seed=1))
    assert int(pipe.scene_cuts) == 1 and banked_frames(pipe) == 1  # emptied, then this frame banked
    no_detector = build(bank=dict(cache_interval=1, max_frames=3, merge=False, scene_cut_threshold=None))
    run(no_detector, [scene(i) for i in range(4)] + [scene(0, seed=1)])
    assert no_detector.scene_cut is None and banked_frames(no_detector) == 3


def test_prompt_change_empties_the_bank_and_projects_the_new_prompt_once():
    pipe = build(bank=dict(cache_interval=1))
    unet = pipe.models.unet
    cross = next(layer.name for layer in attention_layers(unet) if layer.cross)
    weight = dict(unet.named_modules())[cross].to_k.weight  # shared by the UNet copies and the prompt encoder
    projections = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: projections.append(1) if getattr(module, "weight", None) is weight else None)
    try:
        run(pipe, [scene(i) for i in range(4)])
        assert len(projections) == 0  # projected when the prompt was set, never per frame (4 frames, 6 UNet calls)
        pipe.update_prompt("claymation")
        assert pipe.bank.stored_frames == 0
        after = run(pipe, [scene(i) for i in range(4, 7)])
        assert len(projections) == 1 and pipe.bank.stored_frames == 3
    finally:
        hook.remove()
    reference = build(mode="img2img")
    run(reference, [scene(i) for i in range(4)])
    reference.update_prompt("claymation")
    assert not torch.equal(after[-1], run(reference, [scene(i) for i in range(4, 7)])[-1])


def test_token_merging_changes_the_output_but_not_its_shape():
    frames = [scene(i) for i in range(3)]
    plain = run(build(bank=False), frames)
    merged_pipe = build(bank=False, token_merge_ratio=0.5)
    merged = run(merged_pipe, frames)
    assert all(a.shape == b.shape for a, b in zip(plain, merged))
    assert (merged[-1] - plain[-1]).abs().max() > 1e-3
    with_bank = build(token_merge_ratio=0.5)
    run(with_bank, frames)
    first = with_bank.banked_unet.layout.kv[0]  # a layer of the highest-resolution attention level
    h, w = first.grid
    assert first.tokens == h * w - merged_count(h, w, 0.5) < h * w  # the bank stores what attention saw


def test_sparse_bank_banks_the_budget_per_frame():
    pipe = build(bank=dict(sparse_keep_ratio=0.25, cache_interval=1, merge=False))
    run(pipe, [scene(i) for i in range(3)])
    first = pipe.bank.layout.kv[0]
    assert first.kept == -(-first.tokens // 4) and first.capacity == first.kept
    assert torch.isfinite(pipe.bank.tensors()[2]).all()


def test_sessions_have_their_own_bank():
    pipe = build(bank=dict(cache_interval=1))
    other = pipe.new_session()
    other.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5, delta=0.5)
    run(pipe, [scene(i) for i in range(3)])
    assert pipe.bank.stored_frames == 3 and other.bank.stored_frames == 0


def test_new_stages_rebuild_the_bank():
    pipe = build()
    pipe(scene(0))
    pipe.set_t_index_list([10, 45])
    assert pipe.bank.stages == 2 and pipe.bank.stored_frames == 0
    assert pipe(scene(1)).shape == (3, SIZE, SIZE)


def test_video_options_are_validated_before_loading():
    with pytest.raises(ConfigError, match="bank is a mode 'video' option"):
        StreamConfig(model="tiny", mode="img2img", bank={"max_frames": 2})
    with pytest.raises(ConfigError, match="token_merge_ratio is a mode 'video' option"):
        StreamConfig(model="tiny", mode="txt2img", token_merge_ratio=0.3)
    with pytest.raises(ConfigError, match="sparse_keep_ratio 0.5 .* token_merge_ratio 0.3"):
        StreamConfig(model="tiny", mode="video", bank={"sparse_keep_ratio": 0.5}, token_merge_ratio=0.3)
    with pytest.raises(ConfigError, match="unknown bank option"):
        StreamConfig(model="tiny", mode="video", bank={"frames": 2})
    with pytest.raises(ConfigError, match=r"fusion_blocks \['middle'\] .* choose from"):
        build(bank=dict(fusion_blocks=["middle"]))
    assert StreamConfig(model="tiny", mode="img2img", bank=False).bank is None


def test_numpy_frames_round_trip():
    pipe = build()
    frame = (scene(0).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = pipe(frame)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8


def test_video_mode_builds_only_the_networks_it_calls(monkeypatch):
    """The plain UNet is never called in video mode (the banked one is): no graph or engine for it."""
    from livediff.accelerators.eager import EagerBackend

    built = []
    runner = EagerBackend.runner
    monkeypatch.setattr(EagerBackend, "runner", lambda self, function: built.append(function.name) or
                        runner(self, function))
    pipe = build()
    assert pipe.runners.unet is None
    assert sorted(built) == ["banked_unet", "vae_decoder", "vae_encoder"]
    pipe(scene(0))
