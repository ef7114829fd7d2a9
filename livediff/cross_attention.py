"""Cross-attention whose keys and values are inputs of the UNet function, computed once per prompt.

A UNet's cross-attention layers attend to the prompt's token embeddings through their own key and
value projections. Those depend only on the prompt, so projecting them at every call repeats the
same work for every frame of a stream (StreamDiffusion does; 2.3% of SD 2.1's UNet FLOPs at 256²,
32 small matrix products per call). Here the prompt encoder computes them once per prompt
(`cross_attention_kv`), and the UNet takes them as inputs, one key and one value per
cross-attention layer and row, laid out per row like every other conditioning tensor.

An IP-Adapter adds, in every cross-attention layer, a second attention over a few image tokens
next to the text one: out = to_out(attn(q, K_text, V_text) + s · attn(q, K_img, V_img)). K_img and
V_img depend only on the reference image, the adapter's weights and the scale, so the stream
computes them once per change of image or scale (`pipelines.ip_adapter`) and the UNet takes them as
inputs the same way; the scale is folded into the values (s · attn(q, K, V) = attn(q, K, s · V)),
so changing it live is a new input value, never a new graph. Exported backends see plain inputs.

The processors read the call's K/V from a `CrossAttentionSlot` (a plain object, which tracers
follow) on a weight-sharing copy of the UNet: the original UNet, shared by every pipeline of the
process, keeps its own processors.
"""
from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CrossAttentionLayout:
    """Which cross-attention layers take `kind` ("text" or "image") K/V inputs (module paths, in the
    UNet's processor order, the order IP-Adapter weight files number them), their K/V widths and
    the token count."""

    layers: tuple[str, ...]
    widths: tuple[int, ...]
    tokens: int
    kind: str = "image"

    @classmethod
    def of(cls, unet, tokens: int, kind: str = "image") -> "CrossAttentionLayout":
        names, widths = [], []
        for name, module in unet.named_modules():
            if getattr(module, "is_cross_attention", False) and name.endswith("attn2"):
                names.append(name)
                widths.append(module.to_k.out_features)
        return cls(tuple(names), tuple(widths), tokens, kind)

    def input_names(self) -> tuple[str, ...]:
        return tuple(f"{self.kind}_{part}_{i}" for i in range(len(self.layers)) for part in ("key", "value"))

    def example_inputs(self, rows: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(rows, self.tokens, width, dtype=dtype, device=device)
                     for width in self.widths for _ in range(2))


class CrossAttentionSlot:
    """Where the owner of a copy puts the K/V of the call in progress (layer → (keys, values)):
    the text's for every cross-attention layer, an IP-Adapter's image ones or None."""

    def __init__(self):
        self.text: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.image: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None


def _by_layer(layout: CrossAttentionLayout, tensors: Sequence[torch.Tensor]) -> dict:
    if len(tensors) != 2 * len(layout.layers):
        raise ValueError(f"this UNet takes {2 * len(layout.layers)} {layout.kind} K/V inputs, got {len(tensors)}")
    return {name: (tensors[2 * i], tensors[2 * i + 1]) for i, name in enumerate(layout.layers)}


@contextmanager
def cross_attention_call(slot: CrossAttentionSlot, text: CrossAttentionLayout, text_kv: Sequence[torch.Tensor],
                         image: CrossAttentionLayout | None, image_kv: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block the processors on `slot` read `text_kv` and `image_kv` (key, value per layer,
    in layout order)."""
    if image is None and image_kv:
        raise ValueError(f"this UNet has no IP-Adapter layers but got {len(image_kv)} image K/V inputs")
    slot.text = _by_layer(text, text_kv)
    slot.image = _by_layer(image, image_kv) if image is not None else None
    try:
        yield
    finally:
        slot.text = slot.image = None


@torch.no_grad()
def cross_attention_kv(unet, layout: CrossAttentionLayout, text: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(1, tokens, dim) text embeddings → the key and value of every layer of `layout`, in order, as
    the layers' own projections compute them."""
    modules = dict(unet.named_modules())
    out = []
    for name in layout.layers:
        attn = modules[name]
        states = attn.norm_encoder_hidden_states(text) if attn.norm_cross else text
        out += [attn.to_k(states), attn.to_v(states)]
    return tuple(out)


def multi_head_attention(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         bias: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention of `attn`'s heads on (B, N, C) projections, before its output
    projection; bias (B, 1, 1, Nk) is added to the logits."""
    batch, heads = query.shape[0], attn.heads
    head_dim = key.shape[-1] // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value), attn_mask=bias)
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)


def finish(attn, out: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """What a diffusers attention layer does after its output projection: the residual connection
    and the output rescale, where the layer has them."""
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def cross_attention(attn, name: str, slot: CrossAttentionSlot, hidden_states: torch.Tensor) -> torch.Tensor:
    """Layer `name`'s attention over the call's text K/V, plus the image term when it has image K/V,
    before the output projection."""
    if slot.text is None:
        raise ValueError(f"layer {name}: cross-attention K/V are inputs of this UNet copy; call it inside "
                         f"cross_attention_call")
    query = attn.to_q(hidden_states)
    keys, values = slot.text[name]
    out = multi_head_attention(attn, query, keys.to(query.dtype), values.to(query.dtype))
    if slot.image is not None and name in slot.image:
        keys, values = slot.image[name]
        out = out + multi_head_attention(attn, query, keys.to(query.dtype), values.to(query.dtype))
    return out


class InputKVAttnProcessor:
    """Cross-attention on the K/V inputs of the call (see the module docstring); the text embeddings
    diffusers passes are not read."""

    def __init__(self, name: str, slot: CrossAttentionSlot):
        self.name = name
        self.slot = slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None or hidden_states.ndim != 3:
            raise ValueError(f"layer {self.name}: cross-attention K/V inputs support unmasked attention on (B, N, C) "
                             f"tokens only")
        out = cross_attention(attn, self.name, self.slot, hidden_states)
        return finish(attn, attn.to_out[1](attn.to_out[0](out)), hidden_states)


def weight_sharing_copy(module: torch.nn.Module) -> torch.nn.Module:
    """New module objects sharing every parameter and buffer of `module` (no weight memory spent)."""
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, shared)


def input_kv_processors(unet, layout: CrossAttentionLayout) -> CrossAttentionSlot:
    """Put `InputKVAttnProcessor`s on the layout's layers of `unet`, a copy the caller owns
    (`weight_sharing_copy`), and return the slot they read."""
    slot = CrossAttentionSlot()
    modules = dict(unet.named_modules())
    for name in layout.layers:
        modules[name].set_processor(InputKVAttnProcessor(name, slot))
    return slot
