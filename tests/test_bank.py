"""The feature bank's parts on random tensors: extended attention, fusion, FIFO/merged memory,
sparse selection, scene cuts, the row → stage map and the static layout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from livediff.pipelines import rcfg
from livediff.cross_attention import cross_attention_kv
from livediff.pipelines.bank.attention import BankCall, BankSelfAttnProcessor, CallState, bank_call
from livediff.pipelines.bank.config import BankConfig
from livediff.pipelines.bank.feature_bank import FeatureBank
from livediff.pipelines.bank.fusion import fuse_features
from livediff.pipelines.bank.layout import BankEntry, BankLayout, attention_layers, default_fusion_blocks, grid_at
from livediff.pipelines.bank.merge import bipartite_plan, merge_memory, merge_tokens, unmerge_tokens
from livediff.pipelines.bank.scene_cut import SceneCutDetector
from livediff.pipelines.bank.sparse import latent_motion, select_tokens
from livediff.pipelines.bank.unet import BankedUNet, call_rows
from livediff.errors import ConfigError
from livediff.pipelines.presets import build_preset

DIM, HEADS, GRID = 32, 4, (4, 6)
TOKENS = GRID[0] * GRID[1]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def self_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS).eval()


def reference_attention(attn: Attention, x: torch.Tensor, bank_k=None, bank_v=None, bias=None) -> torch.Tensor:
    """Extended attention written out: concatenate, logits + bias, softmax, weighted sum, projection."""
    q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    logit_bias = torch.zeros(x.shape[0], x.shape[1])
    if bank_k is not None:
        k, v = torch.cat([k, bank_k], 1), torch.cat([v, bank_v], 1)
        logit_bias = torch.cat([logit_bias, bias], 1)
    d = DIM // HEADS
    heads = lambda t: t.view(t.shape[0], t.shape[1], HEADS, d).transpose(1, 2)  # noqa: E731
    logits = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(d) + logit_bias[:, None, None, :]
    out = (logits.softmax(-1) @ heads(v)).transpose(1, 2).reshape(x.shape[0], x.shape[1], DIM)
    return attn.to_out[0](out)


def run_processor(attn: Attention, x: torch.Tensor, call: BankCall) -> torch.Tensor:
    slot = CallState()
    attn.set_processor(BankSelfAttnProcessor("layer", 0, False, slot))
    with bank_call(slot, call):
        return attn(x)


@torch.no_grad()
def test_extended_attention_with_empty_bank_equals_plain_attention():
    attn, x = self_attention(), torch.randn(2, TOKENS, DIM, generator=generator())
    plain = AttnProcessor2_0()(attn, x)
    empty = (torch.randn(2, 10, DIM), torch.randn(2, 10, DIM), torch.full((2, 10), float("-inf")))
    out = run_processor(attn, x, BankCall(latent_hw=GRID, kv={"layer": empty}))
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="BankedUNet"):
        attn(x)  # outside a call the processor has no bank to read


@torch.no_grad()
def test_extended_attention_with_bank_equals_hand_written_reference():
    g = generator(1)
    attn, x = self_attention(), torch.randn(2, TOKENS, DIM, generator=g)
    bank_k, bank_v = torch.randn(2, 12, DIM, generator=g), torch.randn(2, 12, DIM, generator=g)
    mass = torch.rand(2, 12, generator=g) * 3
    mass[0, :4] = 0  # empty slots
    bias = mass.log()
    call = BankCall(latent_hw=GRID, kv={"layer": (bank_k, bank_v, bias)})
    out = run_processor(attn, x, call)
    torch.testing.assert_close(out, reference_attention(attn, x, bank_k, bank_v, bias), rtol=1e-5, atol=1e-5)
    assert torch.equal(call.new_kv["layer"][0], attn.to_k(x))  # this call's keys come back as new entries
    assert not torch.allclose(out, reference_attention(attn, x), atol=1e-3)  # the bank does change the output


@torch.no_grad()
def test_mass_bias_is_proportional_attention():
    """A banked token with mass 2 weighs exactly like two copies of it (what a merged memory relies on)."""
    g = generator(2)
    attn, x = self_attention(), torch.randn(1, TOKENS, DIM, generator=g)
    k, v = torch.randn(1, 3, DIM, generator=g), torch.randn(1, 3, DIM, generator=g)
    bias = torch.tensor([[0.0, math.log(2), 0.0]])
    weighted = run_processor(attn, x, BankCall(latent_hw=GRID, kv={"layer": (k, v, bias)}))
    copies = (torch.cat([k, k[:, 1:2]], 1), torch.cat([v, v[:, 1:2]], 1), torch.zeros(1, 4))
    torch.testing.assert_close(weighted, run_processor(attn, x, BankCall(latent_hw=GRID, kv={"layer": copies})),
                               rtol=1e-5, atol=1e-6)


def test_fusion_threshold_above_one_changes_nothing():
    g = generator(3)
    out, banked = torch.randn(2, 16, 8, generator=g), torch.randn(2, 16, 8, generator=g)
    banked[:, :16] = out * 2  # perfect matches exist
    assert torch.equal(fuse_features(out, banked, torch.zeros(2, 16), 1.01, 0.8), out)


def test_fusion_with_identical_bank_frame_blends_by_strength():
    g = generator(4)
    out = torch.randn(1, 16, 8, generator=g)
    banked = (out * 3)[:, torch.randperm(16, generator=g)]  # same directions (cosine 1), scaled, shuffled
    fused = fuse_features(out, banked, torch.zeros(1, 16), 0.98, 0.8)
    torch.testing.assert_close(fused, 0.2 * out + 0.8 * (3 * out))
    empty = fuse_features(out, banked, torch.full((1, 16), float("-inf")), 0.98, 0.8)
    assert torch.equal(empty, out)  # empty slots never match


def test_fusion_leaves_unmatched_tokens_alone():
    out = torch.eye(4).unsqueeze(0)
    banked = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0]]])
    fused = fuse_features(out, banked, torch.zeros(1, 2), 0.9, 0.5)
    assert torch.equal(fused[0, 1:], out[0, 1:])  # best cosine 0.71 < 0.9
    assert torch.equal(fused[0, 0], out[0, 0])  # matched a banked copy of itself: the blend is itself


def test_merge_then_unmerge_restores_kept_tokens_and_averages_merged_ones():
    x = torch.randn(2, 10, 4, generator=generator(5))
    x[:, 1] = x[:, 6] + 1e-3  # source 1 is nearly destination 6
    plan = bipartite_plan(x, torch.arange(10).expand(2, -1), sources=5, r=1)
    assert plan.merged.tolist() == [[1], [1]] and plan.target.tolist() == [[1], [1]]
    merged, mass = merge_tokens(x, plan)
    assert merged.shape == (2, 9, 4) and mass.sum(1).tolist() == [10.0, 10.0]
    restored = unmerge_tokens(merged, plan, 10)
    keep = [0, 2, 3, 4, 5, 7, 8, 9]
    assert torch.equal(restored[:, keep], x[:, keep])
    torch.testing.assert_close(restored[:, 1], (x[:, 1] + x[:, 6]) / 2)
    torch.testing.assert_close(restored[:, 6], (x[:, 1] + x[:, 6]) / 2)


def entry(tokens=TOKENS, capacity_frames=1, kept=None, channels=8, grid=GRID) -> BankEntry:
    kept = kept or tokens
    return BankEntry(layer="l", tokens=tokens, grid=grid, channels=channels, kept=kept, capacity=capacity_frames * kept)


def small_bank(merge: bool, max_frames: int, stages=2, keep_ratio=1.0, tokens=TOKENS, seed=0) -> FeatureBank:
    config = BankConfig(merge=merge, max_frames=max_frames, sparse_keep_ratio=keep_ratio, seed=seed)
    kept = math.ceil(tokens * keep_ratio)
    layout = BankLayout(max_frames=max_frames, kv=(entry(tokens, max_frames, kept),),
                        out=(entry(tokens, max_frames, kept),))
    return FeatureBank(layout, config, stages, "cpu", torch.float32)


def random_entries(g: torch.Generator, stages=2, frames=1, tokens=TOKENS) -> list[torch.Tensor]:
    return [torch.randn(stages * frames, tokens, 8, generator=g) for _ in range(3)]


def test_fifo_keeps_exactly_the_last_max_frames():
    bank, g = small_bank(merge=False, max_frames=3), generator(6)
    history = []
    for _ in range(7):
        entries = random_entries(g)
        history.append(entries[0])
        bank.update(entries)
        k, _, bias, *_ = bank.tensors()
        assert int(torch.isfinite(bias).sum()) == 2 * TOKENS * min(len(history), 3)
    stored = {tuple(k[0, i * TOKENS].tolist()) for i in range(3)}
    assert stored == {tuple(h[0, 0].tolist()) for h in history[-3:]}


def test_merged_memory_stays_the_same_size_over_1000_frames():
    bank, g = small_bank(merge=True, max_frames=2, tokens=16), generator(7)
    shapes, nbytes = [tuple(t.shape) for t in bank.tensors()], bank.nbytes
    pointers = [t.data_ptr() for t in bank.tensors()]
    for _ in range(1000):
        bank.update(random_entries(g, tokens=16))
    assert [tuple(t.shape) for t in bank.tensors()] == shapes and bank.nbytes == nbytes
    assert [t.data_ptr() for t in bank.tensors()] == pointers  # updated in place
    k, v, bias, o, o_bias = bank.tensors()
    assert torch.isfinite(k).all() and torch.isfinite(bias).all() and torch.isfinite(o_bias).all()
    torch.testing.assert_close(bias.exp().sum(1), torch.full((2,), 2.0 * 16))  # weighs max_frames frames
    assert bank.stored_frames == 1000 and min(bank.stored_frames, bank.config.max_frames) == 2


def test_merged_memory_is_reproducible_with_its_seed():
    def run(seed):
        bank, g = small_bank(merge=True, max_frames=1, seed=seed), generator(8)
        for _ in range(5):
            bank.update(random_entries(g))
        return bank.tensors()[0]

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_merged_memory_merges_the_most_similar_pairs():
    values = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [0.0, -1.0]]])
    merged, mass = merge_memory(values, 2, torch.ones(1, 4), 1, generator(0))
    assert merged.shape == (1, 3, 2) and sorted(mass[0].tolist()) == [1.0, 1.0, 2.0]
    # whatever the random partition, the only merge with cosine ~1 is tokens 0 and 2
    assert any(torch.allclose(t, torch.tensor([1.0, 0.005])) for t in merged[0])


def test_bank_reset_empties_every_slot():
    bank = small_bank(merge=True, max_frames=1)
    bank.update(random_entries(generator(9)))
    bank.reset()
    _, _, bias, _, out_bias = bank.tensors()
    assert torch.isneginf(bias).all() and torch.isneginf(out_bias).all() and bank.stored_frames == 0


def moving_square_latents(step: int, size=(8, 12)) -> torch.Tensor:
    torch.manual_seed(0)
    background = torch.randn(1, 4, *size) * 0.1
    latent = background.clone()
    latent[:, :, 2:4, step:step + 2] += 3.0
    return latent


def test_sparse_bank_keeps_every_moving_token_of_a_moving_square():
    motion = latent_motion(moving_square_latents(3), moving_square_latents(4))[0]
    moving_positions = {(y, x) for y in range(8) for x in range(12) if motion[y, x] > 0.1}
    assert moving_positions == {(y, x) for y in (2, 3) for x in (3, 5)}  # the uncovered and the covered column
    grid = (4, 6)  # a level-1 layer: the square covers grid cells (1, 1) and (1, 2)
    rank = torch.rand(24, generator=generator(10))
    selection = select_tokens(motion[None], grid, keep=8, threshold=0.1, static_rank=rank)
    kept = set(selection.index[0].tolist())
    assert {1 * 6 + 1, 1 * 6 + 2} <= kept and len(kept) == 8
    assert int(selection.dropped_moving[0]) == 0
    torch.testing.assert_close(selection.mass.sum(), torch.tensor(24.0))  # a frame keeps its full mass
    static = [i for i in range(24) if i not in (7, 8)]
    assert kept - {7, 8} == {static[i] for i in rank[static].topk(6).indices.tolist()}  # the fixed static sample


def test_sparse_bank_update_keeps_budget_and_full_mass():
    bank, g = small_bank(merge=False, max_frames=2, keep_ratio=0.25), generator(11)
    motion = torch.zeros(2, 1, 8, 12)
    motion[:, :, 0:2, 0:2] = 1.0  # grid cell (0, 0) moves
    bank.update(random_entries(g), motion)
    _, _, bias, _, _ = bank.tensors()
    assert bias.shape == (2, 2 * 6)
    torch.testing.assert_close(bias[:, :6].exp().sum(1), torch.full((2,), float(TOKENS)))
    with pytest.raises(ValueError, match="motion"):
        bank.update(random_entries(g))


def test_scene_cut_detector_ignores_motion_and_brightness_but_sees_a_new_scene():
    detector = SceneCutDetector(0.5)
    y, x = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    scene = torch.stack([x, y, x * y])
    frames = []
    for i in range(6):
        f = scene.clone()
        f[:, 10:26, 4 + 4 * i:20 + 4 * i] = 1.0
        frames.append(f)
    assert not any(detector(f[None]) for f in frames)
    assert not detector((frames[-1] * 0.5 - 0.2)[None])  # exposure change
    other = torch.rand(3, 64, 64, generator=generator(12)) * 2 - 1
    assert detector(other[None])
    assert detector(torch.zeros(1, 3, 64, 64))  # a flat frame after a structured one (cut to black)
    detector.reset()
    assert not detector(torch.zeros(1, 3, 64, 64)) and not detector(torch.full((1, 3, 64, 64), 0.5))


@pytest.mark.parametrize("cfg_type", ["none", "self", "full", "initialize"])
@pytest.mark.parametrize("frames", [1, 2])
def test_call_rows_match_the_rows_the_stream_batch_builds(cfg_type, frames):
    """The layout worked out from Python ints equals the one read off the rows' own timesteps."""
    stage_t = torch.tensor([999, 759, 499, 259])

    def stages_by_timestep(rows: torch.Tensor) -> tuple[int, ...]:
        return tuple(int((stage_t == t).nonzero()) for t in rows)

    steady = rcfg.unet_rows(stage_t.repeat_interleave(frames), cfg_type, 1.5, frames)
    layout = call_rows(0, 4, frames, steady.shape[0])
    extra = {"none": 0, "self": 0, "full": 4 * frames, "initialize": frames}[cfg_type]
    assert layout.extra == extra and layout.present == (0, 1, 2, 3)
    assert layout.stages == stages_by_timestep(steady)  # CFG rows read the bank of their own stage
    for stage in range(3):  # warm-up calls: one stage; `initialize` only adds rows at stage 0
        warm_type = cfg_type if (cfg_type != "initialize" or stage == 0) else "self"
        rows = rcfg.unet_rows(stage_t[stage].repeat(frames), warm_type, 1.5, frames)
        warm = call_rows(stage, stage + 1, frames, rows.shape[0])
        assert warm.present == (stage,) and warm.stages == stages_by_timestep(rows)
        assert warm.extra == rows.shape[0] - frames


def test_call_rows_rejects_a_row_count_it_cannot_place():
    with pytest.raises(ValueError, match="cannot hold the 4 stream rows"):
        call_rows(0, 2, 2, 3)
    with pytest.raises(ValueError, match="cannot hold"):
        call_rows(0, 2, 2, 9)


@pytest.fixture(scope="module")
def tiny_unet():
    return build_preset("tiny")["unet"].eval()


def test_layout_matches_the_unet_at_an_odd_latent_size(tiny_unet):
    layers = attention_layers(tiny_unet)
    first_up = next(i for i, block in enumerate(tiny_unet.up_blocks) if getattr(block, "attentions", None))
    assert default_fusion_blocks(layers) == ("mid_block", f"up_blocks.{first_up}")
    latent_hw = (9, 7)
    layout = BankLayout.build(layers, latent_hw, 2, 1.0, ("mid_block",), lambda layer, grid: grid[0] * grid[1])
    banked = BankedUNet(tiny_unet, layout, fusion_threshold=0.5, fusion_strength=0.5)
    rows = 3
    bank = [torch.zeros(shape) for _, shape in layout.input_shapes(rows)]
    text_kv = cross_attention_kv(tiny_unet, banked.text, torch.randn(rows, 77, 32))
    with torch.no_grad():
        outputs = banked(torch.randn(rows, 4, *latent_hw), torch.tensor([999, 500, 10]), *text_kv, *bank)
    assert [tuple(o.shape) for o in outputs[1:]] == [shape for _, shape in layout.output_shapes(rows)]
    assert outputs[0].shape == (rows, 4, *latent_hw)
    assert len(banked.input_names) == 2 + len(text_kv) + len(bank) and len(banked.output_names) == len(outputs)
    assert grid_at(latent_hw, 1) == (5, 4)


def test_banked_unet_shares_the_weights_and_leaves_the_original_untouched(tiny_unet):
    sample, t, text = torch.randn(2, 4, 8, 8), torch.tensor([999, 500]), torch.randn(2, 77, 32)
    processors = dict(tiny_unet.attn_processors)
    with torch.no_grad():
        before = tiny_unet(sample, t, encoder_hidden_states=text).sample
        banked = BankedUNet(tiny_unet, BankLayout.empty())
        (through_copy,) = banked(sample, t, *cross_attention_kv(tiny_unet, banked.text, text))
        after = tiny_unet(sample, t, encoder_hidden_states=text).sample
    assert torch.equal(before, after) and dict(tiny_unet.attn_processors) == processors
    torch.testing.assert_close(through_copy, before, rtol=1e-5, atol=1e-6)
    assert {p.data_ptr() for p in banked.parameters()} == {p.data_ptr() for p in tiny_unet.parameters()}


def test_banked_unet_exports_to_onnx_and_runs_the_same(tiny_unet, tmp_path):
    """The bank as explicit static-shape inputs/outputs is what lets compiled backends keep it on."""
    import onnxruntime

    from livediff.pipelines.token_merge import merge_level, tokens_after_merge

    layers = attention_layers(tiny_unet)
    level = merge_level(layers)
    layout = BankLayout.build(layers, (8, 8), 2, 1.0, default_fusion_blocks(layers),
                              lambda layer, grid: tokens_after_merge(grid, 0.5) if layer.level == level
                              else grid[0] * grid[1])
    banked = BankedUNet(tiny_unet, layout, token_merge_ratio=0.5, fusion_threshold=0.5, fusion_strength=0.8).eval()
    g = generator(14)
    bank = [torch.randn(shape, generator=g) for _, shape in layout.input_shapes(3)]
    bank[2][:, :5] = float("-inf")  # some empty slots in the first layer
    text_kv = cross_attention_kv(tiny_unet, banked.text, torch.randn(3, 77, 32, generator=g))
    inputs = (torch.randn(3, 4, 8, 8, generator=g), torch.tensor([999.0, 500.0, 10.0]), *text_kv, *bank)
    path = tmp_path / "banked.onnx"
    with torch.no_grad():
        expected = banked(*inputs)
        torch.onnx.export(banked, inputs, str(path), dynamo=True, input_names=list(banked.input_names),
                          output_names=list(banked.output_names))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {name: x.numpy() for name, x in zip(banked.input_names, inputs)})
    assert [o.shape for o in outputs] == [tuple(e.shape) for e in expected]
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_bank_config_validation_names_the_bad_value():
    with pytest.raises(ConfigError, match="cache_interval 0"):
        BankConfig(cache_interval=0)
    with pytest.raises(ConfigError, match="max_frames"):
        BankConfig(max_frames=True)
    with pytest.raises(ConfigError, match=r"fusion_strength 1.5 is outside \[0.0, 1.0\]"):
        BankConfig(fusion_strength=1.5)
    with pytest.raises(ConfigError, match="sparse_keep_ratio 0"):
        BankConfig(sparse_keep_ratio=0)
    with pytest.raises(ConfigError, match="unknown bank option"):
        BankConfig.from_setting({"cache_size": 3})
    with pytest.raises(ConfigError, match="fusion_blocks"):
        BankConfig(fusion_blocks="mid_block")
    assert BankConfig.from_setting(None) == BankConfig() and BankConfig.from_setting(False) is False
