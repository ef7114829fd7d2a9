"""Cross-attention keys and values are projected once per prompt, never per frame, in every mode."""
from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from livediff import load_pipeline
from livediff.cross_attention import (CrossAttentionLayout, CrossAttentionSlot, InputKVAttnProcessor,
                                      cross_attention_call, cross_attention_kv)
from livediff.networks import text_layout

DIM, HEADS, TOKENS = 32, 4, 24


def projections_counted(unet):
    """A counter of calls of any module (original or weight-sharing copy) whose weight is one of the
    UNet's cross-attention key projections."""
    modules = dict(unet.named_modules())
    weights = {id(modules[f"{name}.to_k"].weight) for name in text_layout(unet).layers}
    calls = []

    def hook(module, args, output):
        if id(getattr(module, "weight", None)) in weights:
            calls.append(1)

    return calls, torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_a_stream_projects_the_text_once_per_prompt(mode):
    pipe = load_pipeline(model="tiny", mode=mode, t_index_list=[20, 40], width=64, height=64, device="cpu",
                         dtype="float32", cfg_type="full", seed=3)
    layers = len(text_layout(pipe.models.unet).layers)
    calls, handle = projections_counted(pipe.models.unet)
    try:
        pipe.prepare(prompt="oil painting", guidance_scale=1.5)
        assert len(calls) == 2 * layers  # the prompt and the negative prompt
        frames = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
        first = [pipe(f, output="tensor") for f in frames[:3]]
        assert len(calls) == 2 * layers  # no frame projects anything
        pipe.update_prompt("watercolour")
        assert len(calls) == 3 * layers  # the new prompt only
        pipe(frames[3], output="tensor")
        assert len(calls) == 3 * layers
    finally:
        handle.remove()
    # the K/V follow the prompt: the same frames under the new prompt come out differently
    pipe.reset()
    again = [pipe(f, output="tensor") for f in frames[:3]]
    assert (again[-1] - first[-1]).abs().max() > 1e-3


@torch.no_grad()
def test_cross_attention_on_kv_inputs_equals_projecting_the_text():
    torch.manual_seed(13)
    attn = Attention(query_dim=DIM, cross_attention_dim=16, heads=HEADS, dim_head=DIM // HEADS).eval()
    holder = torch.nn.Module()
    holder.attn2 = attn
    attn.is_cross_attention = True
    layout = CrossAttentionLayout.of(holder, 7, kind="text")
    assert layout.layers == ("attn2",) and layout.input_names() == ("text_key_0", "text_value_0")
    cond, uncond = torch.randn(1, 7, 16), torch.randn(1, 7, 16)
    x = torch.randn(3, TOKENS, DIM)
    text = torch.cat([uncond, cond, cond])
    plain = AttnProcessor2_0()(attn, x, text)
    kv = [torch.cat(rows) for rows in zip(cross_attention_kv(holder, layout, uncond),
                                           *[cross_attention_kv(holder, layout, cond)] * 2)]
    slot = CrossAttentionSlot()
    attn.set_processor(InputKVAttnProcessor("attn2", slot))
    with cross_attention_call(slot, layout, kv, None, ()):
        torch.testing.assert_close(attn(x, None), plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="inside cross_attention_call"):
        attn(x, text)
    with pytest.raises(ValueError, match="takes 2 text K/V inputs, got 1"):
        with cross_attention_call(slot, layout, kv[:1], None, ()):
            pass
