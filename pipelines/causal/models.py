"""The networks of a causal video pipeline: a random-weight preset or a model in diffusers' Wan layout,
loaded once per process (`pipelines.loader`) and placed on the device in the pipeline's precision."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from livediff.errors import ConfigError

TINY_PRESET = "tiny-wan-causal"


@dataclass
class CausalModels:
    """The networks of a causal video pipeline, on their device and dtype (shared, read-only)."""

    name: str
    transformer: Any  # diffusers WanTransformer3DModel
    vae: Any  # diffusers AutoencoderKLWan
    text_encoder: Any  # transformers UMT5EncoderModel (or T5)
    tokenizer: Any


class _Part:
    """`from_pretrained` of one component of a diffusers pipeline folder / hub repository (its subfolder)."""

    def __init__(self, cls, subfolder: str):
        self.cls, self.subfolder = cls, subfolder

    def from_pretrained(self, model: str, **kwargs):
        return self.cls.from_pretrained(model, subfolder=self.subfolder, **kwargs)


def load_causal_models(model: str, device: str, dtype: str) -> CausalModels:
    """A random-weight preset (`CAUSAL_PRESETS`: tiny-wan-causal, wan-causal-reduced, wan-causal-random; no
    download) or a hub id / folder in diffusers' Wan layout (transformer/, vae/, text_encoder/, tokenizer/ as
    in Wan-AI/Wan2.1-T2V-1.3B-Diffusers). On the `meta` device a preset is built there directly (shapes
    only: the 1.3B layout costs no memory)."""
    from livediff.pipelines.causal.presets import (CAUSAL_PRESETS, build_text_encoder, build_tiny_wan_causal,
                                                   build_tiny_wan_vae, build_wan_transformer, build_wan_vae)
    from livediff.pipelines.models import resolve_dtype
    from livediff.pipelines.placement import place_network

    torch_dtype = resolve_dtype(dtype, device)
    if model in CAUSAL_PRESETS:
        from livediff.pipelines.presets import make_tokenizer

        tokenizer = make_tokenizer()
        text_encoder = build_text_encoder(model, tokenizer, seed=0, device="meta" if device == "meta" else "cpu")
        if model == TINY_PRESET:
            transformer, vae = build_tiny_wan_causal(seed=0), build_tiny_wan_vae(seed=0)
        else:
            where = "meta" if device == "meta" else "cpu"
            transformer, vae = build_wan_transformer(model, 0, where), build_wan_vae(model, 0, where)
    else:
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        from livediff.pipelines.models import from_folder_or_hub

        parts = {}
        for name, cls in (("transformer", WanTransformer3DModel), ("vae", AutoencoderKLWan),
                          ("text_encoder", UMT5EncoderModel), ("tokenizer", AutoTokenizer)):
            parts[name] = from_folder_or_hub(_Part(cls, name), model, preset=TINY_PRESET)
            if parts[name] is None:
                raise ConfigError(f"Unknown causal video model {model!r}: use a hub id or a local folder in diffusers' "
                                  f"Wan layout (e.g. 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'), or a preset "
                                  f"({', '.join(CAUSAL_PRESETS)}).")
        transformer, vae, text_encoder, tokenizer = (parts[n] for n in ("transformer", "vae", "text_encoder",
                                                                        "tokenizer"))
    # the video VAE runs in float32 under a half-precision transformer, as diffusers' Wan pipelines run it;
    # the transformer's and text encoder's `_keep_in_fp32_modules` stay float32 too (`placement`)
    vae_dtype = torch.float64 if torch_dtype == torch.float64 else torch.float32
    for net, wanted in ((transformer, torch_dtype), (vae, vae_dtype), (text_encoder, torch_dtype)):
        place_network(net, device, wanted)
    return CausalModels(model, transformer, vae, text_encoder, tokenizer)
