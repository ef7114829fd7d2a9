"""Token merging inside self-attention: exact at ratio 0, same shapes and a real change above it,
the shared UNet left untouched, and merge plans that pick the most redundant tokens."""
from __future__ import annotations

import pytest
import torch

from livediff.cross_attention import cross_attention_kv
from livediff.pipelines import token_merge
from livediff.pipelines.bank.layout import BankLayout, attention_layers, grid_at
from livediff.pipelines.bank.unet import BankedUNet
from livediff.errors import ConfigError
from livediff.pipelines.presets import build_preset


@pytest.fixture(scope="module")
def unet():
    return build_preset("tiny")["unet"].eval()


def inputs(size=(8, 8)):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, *size, generator=g), torch.tensor([999, 400]),
            torch.randn(2, 77, 32, generator=g))


@torch.no_grad()
def predict(unet, sample, t, text):
    return unet(sample, t, encoder_hidden_states=text).sample


def merging(unet, ratio: float) -> BankedUNet:
    """The UNet with token merging and no bank: the path the video pipeline runs."""
    return BankedUNet(unet, BankLayout.empty(), token_merge_ratio=ratio).eval()


def call(banked: BankedUNet, sample, t, text):
    """`banked` on the text's cross-attention K/V, as the prompt encoder computes them."""
    return banked(sample, t, *cross_attention_kv(banked.unet, banked.text, text))


def test_ratio_zero_is_exactly_the_unmerged_computation(unet):
    sample, t, text = inputs()
    with torch.no_grad():
        merged = call(merging(unet, 0.0), sample, t, text)[0]
    torch.testing.assert_close(merged, predict(unet, sample, t, text), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_merging_changes_the_output_but_not_its_shape_and_leaves_the_unet_alone(unet, ratio):
    sample, t, text = inputs((8, 12))
    plain = predict(unet, sample, t, text)
    with torch.no_grad():
        merged = call(merging(unet, ratio), sample, t, text)[0]
    assert merged.shape == plain.shape and torch.isfinite(merged).all()
    assert not torch.allclose(merged, plain, atol=1e-4)
    assert torch.equal(predict(unet, sample, t, text), plain)


def test_only_the_highest_resolution_attention_sees_merged_tokens(unet):
    banked = merging(unet, 0.5)
    layers = [layer for layer in attention_layers(banked.unet) if not layer.cross]
    level = token_merge.merge_level(layers)
    assert level == min(layer.level for layer in layers)
    modules = dict(banked.unet.named_modules())
    seen: dict[str, list[int]] = {layer.name: [] for layer in layers}
    hooks = [modules[layer.name].to_q.register_forward_hook(
        lambda _m, args, _out, name=layer.name: seen[name].append(args[0].shape[1])) for layer in layers]
    try:
        with torch.no_grad():
            call(banked, *inputs((16, 16)))
    finally:
        for hook in hooks:
            hook.remove()
    for layer in layers:
        h, w = grid_at((16, 16), layer.level)
        expected = h * w - token_merge.merged_count(h, w, 0.5) if layer.level == level else h * w
        assert seen[layer.name] == [expected]
    assert token_merge.tokens_after_merge((8, 8), 0.5) == 32


def test_merge_count_is_capped_by_the_source_tokens():
    assert token_merge.merged_count(8, 8, 0.75) == 48  # all but the 16 destinations
    assert token_merge.merged_count(3, 3, 0.75) == 5  # 4 destinations at (even, even)
    assert token_merge.merged_count(8, 8, 0.0) == 0


def test_plan_merges_duplicated_tokens_first():
    x = torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(1))
    x[0, 1] = x[0, 0]  # (0, 1) duplicates destination (0, 0)
    x[0, 6] = x[0, 10] * 2  # (1, 2) points like destination (2, 2)
    plan = token_merge.attention_plan(x, (4, 4), 2 / 16)
    src_positions = plan.src[0, plan.merged[0]].tolist()
    dst_positions = plan.dst[0, plan.target[0]].tolist()
    assert sorted(zip(src_positions, dst_positions)) == [(1, 0), (6, 10)]


def test_plan_rejects_a_token_count_that_is_not_the_grid():
    with pytest.raises(ValueError, match="4x4 grid"):
        token_merge.attention_plan(torch.randn(1, 15, 8), (4, 4), 0.5)


def test_ratio_is_validated():
    with pytest.raises(ConfigError, match=r"token_merge_ratio 0.8 is outside \[0, 0.75\]"):
        token_merge.check_ratio(0.8)
    with pytest.raises(ConfigError, match="token_merge_ratio"):
        token_merge.check_ratio(True)
