"""IP-Adapter's decoupled cross-attention with the image keys/values as inputs of the UNet function.

An IP-Adapter adds, in every cross-attention layer, a second attention over a few image tokens
next to the text one: out = to_out(attn(q, K_text, V_text) + s · attn(q, K_img, V_img)). K_img and
V_img depend only on the reference image, the adapter's weights and the scale, so the stream
computes them once per change of image or scale (`pipelines.ip_adapter`) and the UNet takes them as
inputs, one key and one value per cross-attention layer and row, like the text embeddings; the
scale is folded into the values (s · attn(q, K, V) = attn(q, K, s · V)), so changing it live is a new
input value, never a new graph. Exported backends see plain graph inputs.

The processors read the call's K/V from an `ImagePromptSlot` (a plain object, which tracers follow)
on a weight-sharing copy of the UNet: the original UNet, shared by every pipeline of the process,
keeps its own processors.
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
class ImagePromptLayout:
    """Which cross-attention layers take image K/V (module paths, in the UNet's processor order, the
    order IP-Adapter weight files number them), their K/V widths and the image token count."""

    layers: tuple[str, ...]
    widths: tuple[int, ...]
    tokens: int

    @classmethod
    def of(cls, unet, tokens: int) -> "ImagePromptLayout":
        names, widths = [], []
        for name, module in unet.named_modules():
            if getattr(module, "is_cross_attention", False) and name.endswith("attn2"):
                names.append(name)
                widths.append(module.to_k.out_features)
        return cls(tuple(names), tuple(widths), tokens)

    def input_names(self) -> tuple[str, ...]:
        return tuple(f"image_{kind}_{i}" for i in range(len(self.layers)) for kind in ("key", "value"))

    def example_inputs(self, rows: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(rows, self.tokens, width, dtype=dtype, device=device)
                     for width in self.widths for _ in range(2))


class ImagePromptSlot:
    """Where the owner of a copy puts the image K/V of the call in progress (layer → (keys, values))."""

    def __init__(self):
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None


@contextmanager
def image_prompt_call(slot: ImagePromptSlot | None, layout: ImagePromptLayout | None,
                      tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """Within the block the processors on `slot` read `tensors` (key, value per layer, in layout order)."""
    if slot is None or layout is None:
        if tensors:
            raise ValueError(f"this UNet has no IP-Adapter layers but got {len(tensors)} image K/V inputs")
        yield
        return
    if len(tensors) != 2 * len(layout.layers):
        raise ValueError(f"the IP-Adapter takes {2 * len(layout.layers)} image K/V inputs, got {len(tensors)}")
    slot.kv = {name: (tensors[2 * i], tensors[2 * i + 1]) for i, name in enumerate(layout.layers)}
    try:
        yield
    finally:
        slot.kv = None


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


def with_image(attn, name: str, slot: ImagePromptSlot | None, query: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The text attention `out` plus the image attention of layer `name` when the call has image K/V."""
    kv = slot.kv if slot is not None else None
    if kv is None or name not in kv:
        return out
    keys, values = kv[name]
    return out + multi_head_attention(attn, query, keys.to(query.dtype), values.to(query.dtype))


class ImagePromptAttnProcessor:
    """Cross-attention with IP-Adapter's image term (see the module docstring)."""

    def __init__(self, name: str, slot: ImagePromptSlot):
        self.name = name
        self.slot = slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if attention_mask is not None or hidden_states.ndim != 3 or encoder_hidden_states is None:
            raise ValueError(f"layer {self.name}: IP-Adapter layers support unmasked cross-attention on (B, N, C) "
                             f"tokens only")
        text = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        query = attn.to_q(hidden_states)
        out = multi_head_attention(attn, query, attn.to_k(text), attn.to_v(text))
        return finish(attn, attn.to_out[1](attn.to_out[0](with_image(attn, self.name, self.slot, query, out))),
                      hidden_states)


def weight_sharing_copy(module: torch.nn.Module) -> torch.nn.Module:
    """New module objects sharing every parameter and buffer of `module` (no weight memory spent)."""
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, shared)


def image_prompt_processors(unet, layout: ImagePromptLayout) -> ImagePromptSlot:
    """Put `ImagePromptAttnProcessor`s on the layout's layers of `unet`, a copy the caller owns
    (`weight_sharing_copy`), and return the slot they read."""
    slot = ImagePromptSlot()
    modules = dict(unet.named_modules())
    for name in layout.layers:
        modules[name].set_processor(ImagePromptAttnProcessor(name, slot))
    return slot
