"""Text conditioning, computed once per prompt (never per frame).

A prompt conditions the UNet through a `Conditioning`: the keys and values its cross-attention
layers read, projected here once per prompt (`livediff.cross_attention`), the token embeddings
where ControlNets read them and, for SDXL, the *added conditioning* summed into the time embedding
(the pooled embedding of the second text encoder and six size ids). The stream lays every tensor
of it out per UNet row the same way (`rcfg.conditioning_rows`), so CFG modes and live prompt
changes need no SDXL case.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from livediff.cross_attention import cross_attention_kv
from livediff.networks import text_layout

#: names of SDXL's added-conditioning inputs, in the order `Conditioning.added` holds them
SDXL_ADDED = ("text_embeds", "time_ids")


@dataclass(frozen=True)
class Conditioning:
    """One prompt's UNet conditioning; every tensor has a leading axis of 1.

    text: (1, tokens, dim) token embeddings, a UNet input only with ControlNets (`text_input`);
    added: () for SD 1.x/2.x, for SDXL (text_embeds (1, pooled_dim), time_ids (1, 6)); text_kv: the
    key and value (1, tokens, width) of every cross-attention layer by input name
    (`CrossAttentionLayout.input_names`); image: with an IP-Adapter, the style image's key and value
    (1, n, width) of every cross-attention layer by input name (`pipelines.ip_adapter`), else empty.
    """

    text: torch.Tensor
    added: tuple[torch.Tensor, ...] = ()
    text_kv: Mapping[str, torch.Tensor] = field(default_factory=dict)
    image: Mapping[str, torch.Tensor] = field(default_factory=dict)
    text_input: bool = False

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """The UNet's conditioning inputs by name (`livediff.networks.unet_input_names`)."""
        return {**({"encoder_hidden_states": self.text} if self.text_input else {}),
                **dict(zip(SDXL_ADDED, self.added, strict=True) if self.added else ()),
                **self.text_kv, **self.image}


def _token_ids(tokenizer, prompt: str, device) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, prompt: str) -> torch.Tensor:
    """(1, tokens, dim) embeddings, the same way diffusers' Stable Diffusion pipelines compute them."""
    ids = _token_ids(tokenizer, prompt, text_encoder.device)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = (ids != tokenizer.pad_token_id).long()
    return text_encoder(ids, attention_mask=mask)[0]


@torch.no_grad()
def encode_prompt_sdxl(models, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's (token embeddings, pooled embedding) as diffusers computes them: the penultimate hidden
    states of both encoders side by side, and the second encoder's projected output."""
    states, pooled = [], None
    for tokenizer, encoder in ((models.tokenizer, models.text_encoder), (models.tokenizer_2, models.text_encoder_2)):
        out = encoder(_token_ids(tokenizer, prompt, encoder.device), output_hidden_states=True)
        if out[0].ndim == 2:
            pooled = out[0]
        states.append(out.hidden_states[-2])
    return torch.cat(states, dim=-1), pooled


def size_ids(height: int, width: int) -> tuple[int, ...]:
    """SDXL's size conditioning for a frame of the model's size: original size, crop origin (0, 0),
    target size. Streams never crop or upscale inside the model, so all three follow the frame."""
    return (height, width, 0, 0, height, width)


class PromptEncoder:
    """Prompts → `Conditioning` for one model family, size, device and dtype."""

    def __init__(self, models, height: int, width: int, dtype: torch.dtype):
        self.models = models
        self.dtype = dtype
        self.sdxl = models.family == "sdxl"
        self.text_layout = text_layout(models.unet)
        device = models.text_encoder.device
        self.time_ids = torch.tensor([size_ids(height, width)], dtype=dtype, device=device) if self.sdxl else None

    def __call__(self, prompt: str, negative: bool = False) -> Conditioning:
        models = self.models
        added = ()
        if not self.sdxl:
            text = encode_prompt(models.tokenizer, models.text_encoder, prompt).to(self.dtype)
        else:
            text, pooled = encode_prompt_sdxl(models, prompt)
            if negative and not prompt and models.zero_empty_negative:
                text, pooled = torch.zeros_like(text), torch.zeros_like(pooled)
            text, added = text.to(self.dtype), (pooled.to(self.dtype), self.time_ids)
        text_kv = dict(zip(self.text_layout.input_names(), cross_attention_kv(models.unet, self.text_layout, text),
                           strict=True))
        return Conditioning(text, added, text_kv, text_input=bool(models.controlnets))
