"""Attention processors of the video pipeline: extended self-attention with the bank, feature
fusion, token merging, and cached cross-attention K/V.

They are installed on a *structural copy* of the UNet (`banked_copy`): new module objects that
share every parameter and buffer with the original, so no weight memory is spent, while the
original UNet — shared by every pipeline of the process and traced by compile/export backends —
keeps its own processors untouched. The processors hold no stream state: they read the state of
the call in progress from the copy's `CallState`, a plain object (tracers such as torch.compile
follow plain attribute reads; a context variable made them break the graph at every layer):

* `slot.bank` (a `BankCall`, set by `BankedUNet.forward`): the bank slices of every row, the
  token-merge ratio, the fusion settings; the processors write this call's keys/values/outputs back.
* `slot.cross` (a `CrossCall`, set by `cross_attention_cache`): the per-prompt K/V cache of the
  cross-attention layers; without it they project the text rows as usual.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from livediff.image_prompt import ImagePromptSlot, finish, multi_head_attention, weight_sharing_copy, with_image
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


class CrossAttentionCache:
    """Cross-attention keys/values of the current prompt embeddings, computed once per prompt.

    Bound to the distinct embedding tensors of a stream (negative, positive); a tensor that is not
    the same object at the same in-place version as the bound one invalidates every entry, so a
    new prompt (a new tensor) or an in-place edit is never served stale K/V.
    """

    def __init__(self):
        self._texts: tuple[torch.Tensor, ...] = ()
        self._versions: tuple[int, ...] = ()
        self._stacked: torch.Tensor | None = None
        self._kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self._texts, self._versions, self._stacked = (), (), None
        self._kv.clear()

    def bind(self, texts: Sequence[torch.Tensor]) -> None:
        texts = tuple(texts)
        same = len(texts) == len(self._texts) and all(
            a is b and a._version == v for a, b, v in zip(texts, self._texts, self._versions))
        if not same:
            self._texts, self._versions = texts, tuple(t._version for t in texts)
            self._stacked = torch.cat(texts)
            self._kv.clear()

    def kv(self, name: str, attn) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, tokens, C) keys and values of layer `name` for the U bound embeddings."""
        if name not in self._kv:
            text = self._stacked
            if attn.norm_cross:
                text = attn.norm_encoder_hidden_states(text)
            self._kv[name] = (attn.to_k(text), attn.to_v(text))
        return self._kv[name]


class StackedCrossAttention:
    """Several sessions' prompt caches seen as one: their embeddings in order, so row maps offset by
    the embeddings before them index it (a run shared by sessions, `pipelines.batching`)."""

    def __init__(self, caches: Sequence[CrossAttentionCache]):
        self.caches = tuple(caches)

    def bind(self, texts: Sequence[torch.Tensor]) -> None:
        """Each member is bound to its own session's embeddings already."""

    def kv(self, name: str, attn) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [cache.kv(name, attn) for cache in self.caches]
        return torch.cat([k for k, _ in pairs]), torch.cat([v for _, v in pairs])


@dataclass
class CrossCall:
    cache: CrossAttentionCache | StackedCrossAttention
    row_text: torch.Tensor  # (B,) index of each row's embedding among the bound ones


@dataclass
class CallState:
    """Where the owner of a banked UNet copy puts the state of the call in progress."""

    bank: BankCall | None = None
    cross: CrossCall | None = None
    image: ImagePromptSlot = field(default_factory=ImagePromptSlot)  # IP-Adapter K/V of the call


@contextmanager
def bank_call(slot: CallState, call: BankCall) -> Iterator[BankCall]:
    slot.bank = call
    try:
        yield call
    finally:
        slot.bank = None


@contextmanager
def cross_attention_cache(slot: CallState, cache: CrossAttentionCache, texts: Sequence[torch.Tensor],
                          row_text: torch.Tensor) -> Iterator[None]:
    """Within the block, cross-attention layers take row b's K/V from `texts[row_text[b]]`'s cache."""
    cache.bind(texts)
    slot.cross = CrossCall(cache, row_text)
    try:
        yield
    finally:
        slot.cross = None


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


class CachedCrossAttnProcessor:
    """Cross-attention whose K/V come from the per-prompt cache when the slot has one (eager
    streaming), and from projecting the text rows otherwise (e.g. when exported)."""

    def __init__(self, name: str, slot: CallState):
        self.name = name
        self.slot = slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None or hidden_states.ndim != 3 or encoder_hidden_states is None:
            raise ConfigError(f"layer {self.name}: the banked UNet supports unmasked cross-attention on (B, N, C) "
                              f"tokens only")
        call = self.slot.cross
        if call is None:
            text = encoder_hidden_states
            if attn.norm_cross:
                text = attn.norm_encoder_hidden_states(text)
            keys, values = attn.to_k(text), attn.to_v(text)
        else:
            if encoder_hidden_states.shape[0] != call.row_text.shape[0]:
                raise ConfigError(f"layer {self.name}: text rows do not match the cross-attention cache's row map")
            keys, values = call.cache.kv(self.name, attn)
            keys, values = keys[call.row_text], values[call.row_text]
        query = attn.to_q(hidden_states)
        out = with_image(attn, self.name, self.slot.image, query, multi_head_attention(attn, query, keys, values))
        return finish(attn, attn.to_out[1](attn.to_out[0](out)), hidden_states)


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
        module.set_processor(CachedCrossAttnProcessor(layer.name, slot) if layer.cross
                             else BankSelfAttnProcessor(layer.name, layer.level, layer.level == level, slot))
    return twin, slot
