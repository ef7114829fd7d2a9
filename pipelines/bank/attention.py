"""Attention processors of the video pipeline: extended self-attention with the bank, feature
fusion, token merging; cross-attention on K/V inputs (`livediff.cross_attention`).

They are installed on a *structural copy* of the UNet (`banked_copy`): new module objects that
share every parameter and buffer with the original, so no weight memory is spent, while the
original UNet — shared by every pipeline of the process and traced by compile/export backends —
keeps its own processors untouched. The processors hold no stream state: they read the state of
the call in progress from the copy's `CallState`, a plain object (tracers such as torch.compile
follow plain attribute reads; a context variable made them break the graph at every layer):

* `slot.bank` (a `BankCall`, set by `BankedUNet.forward`): the bank slices of every row, the
  token-merge ratio, the fusion settings; the processors write this call's keys/values/outputs back.
* `slot.cross` (a `CrossAttentionSlot`, set by `BankedUNet.forward`): the call's text K/V (computed
  once per prompt by the prompt encoder) and IP-Adapter image K/V of every cross-attention layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from livediff.cross_attention import CrossAttentionSlot, InputKVAttnProcessor, finish, multi_head_attention, weight_sharing_copy
from livediff.subpixel import fold_upsamplers
from livediff.pipelines import token_merge
from livediff.pipelines.bank.fusion import fuse_features
from livediff.pipelines.bank.layout import attention_layers, grid_at
from livediff.pipelines.bank.merge import merge_tokens, unmerge_tokens
from livediff.errors import ConfigError


@dataclass
class BankCall:
    """What the self-attention processors read and write during one UNet call (rows on axis 0).

    kv: layer → (keys, values, bias) of the bank, (B, L, C), (B, L, C), (B, L); out: fusion layer →
    (outputs, bias). new_kv / new_out are filled by the processors with this call's keys/values
    (B, T, C) and unfused attention outputs (B, N, C).
    """

    latent_hw: tuple[int, int]
    token_merge_ratio: float = 0.0
    kv: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    fusion_threshold: float = 2.0
    fusion_strength: float = 0.0
    new_kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    new_out: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class CallState:
    """Where the owner of a banked UNet copy puts the state of the call in progress."""

    bank: BankCall | None = None
    cross: CrossAttentionSlot = field(default_factory=CrossAttentionSlot)  # text and image K/V of the call


@contextmanager
def bank_call(slot: CallState, call: BankCall) -> Iterator[BankCall]:
    slot.bank = call
    try:
        yield call
    finally:
        slot.bank = None


def attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention on (B, N, C) projections (bias (B, 1, 1, Nk) added to the logits), then
    the output projection."""
    return attn.to_out[1](attn.to_out[0](multi_head_attention(attn, query, key, value, bias)))


class BankSelfAttnProcessor:
    """Self-attention with token merging, the bank's extended K/V and feature fusion.

    Order inside: merge tokens (`merges` layers, ratio > 0) → q, k, v → attend over [own k; bank k of the
    row's stage] with bias [0; log mass] → output projection → unmerge → record the output → fuse.
    """

    def __init__(self, name: str, level: int, merges: bool, slot: CallState):
        self.name = name
        self.level = level
        self.merges = merges  # at the level where token merging applies (`token_merge.merge_level`)
        self.slot = slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        call = self.slot.bank
        if call is None:
            raise RuntimeError(f"layer {self.name}: a banked UNet copy runs only through BankedUNet.forward")
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise ConfigError(f"layer {self.name}: the bank supports plain self-attention on (B, N, C) tokens only")
        grid = grid_at(call.latent_hw, self.level)
        if hidden_states.shape[1] != grid[0] * grid[1]:
            raise ConfigError(f"layer {self.name} has {hidden_states.shape[1]} tokens, expected a {grid[0]}x{grid[1]} "
                              f"grid; this UNet's layout is not supported by the bank")
        x, plan = hidden_states, None
        if call.token_merge_ratio > 0 and self.merges:
            plan = token_merge.attention_plan(x, grid, call.token_merge_ratio)
            if plan is not None:
                x, _ = merge_tokens(x, plan)
        query, key, value = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        bias = None
        bank = call.kv.get(self.name)
        if bank is not None:
            call.new_kv[self.name] = (key, value)
            bank_key, bank_value, bank_bias = bank
            key, value = torch.cat([key, bank_key], dim=1), torch.cat([value, bank_value], dim=1)
            own = bank_bias.new_zeros(bank_bias.shape[0], x.shape[1])
            bias = torch.cat([own, bank_bias], dim=1).to(query.dtype)[:, None, None, :]
        out = attend(attn, query, key, value, bias)
        if plan is not None:
            out = unmerge_tokens(out, plan, hidden_states.shape[1])
        fusion = call.out.get(self.name)
        if fusion is not None:
            call.new_out[self.name] = out
            out = fuse_features(out, fusion[0], fusion[1], call.fusion_threshold, call.fusion_strength)
        return finish(attn, out, hidden_states)


_UNSUPPORTED = ("group_norm", "spatial_norm", "norm_q", "norm_k", "add_k_proj")


def banked_copy(unet) -> tuple[torch.nn.Module, CallState]:
    """A copy of `unet` sharing all its parameters and buffers, with the bank processors on every
    attention layer and its upsamplers folded (`livediff.subpixel`), and the slot they read. The
    original UNet is not modified."""
    twin = fold_upsamplers(weight_sharing_copy(unet))
    slot = CallState()
    modules = dict(twin.named_modules())
    layers = attention_layers(twin)
    level = token_merge.merge_level(layers)
    for layer in layers:
        module = modules[layer.name]
        present = [a for a in _UNSUPPORTED if getattr(module, a, None) is not None]
        if present:
            raise ConfigError(f"attention layer {layer.name} uses {', '.join(present)}, which the bank processors "
                              f"do not support")
        module.set_processor(InputKVAttnProcessor(layer.name, slot.cross) if layer.cross
                             else BankSelfAttnProcessor(layer.name, layer.level, layer.level == level, slot))
    return twin, slot
