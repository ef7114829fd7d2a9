"""Random-weight model presets that need no download.

* ``tiny``: a few MB, for unit tests. Same component types as Stable Diffusion (a UNet with
  cross-attention, an 8x-downsampling KL VAE, a CLIP text encoder) so every code path is real.
* ``sd-turbo-random`` / ``sd15-random``: the exact layer shapes of SD-Turbo (SD 2.1 layout) and
  SD 1.5. Speed does not depend on weight values, so these measure real throughput.
* ``sd-turbo-reduced``: the SD 2.1 layout at a quarter of the width, for CPU benchmarks.

The tokenizer for presets is a byte-level CLIP tokenizer generated locally (no merges), so token
ids are real but short words become several tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


@dataclass(frozen=True)
class Preset:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    # steps_offset=1 as in the real SD 1.5 / 2.1 scheduler configs (LCM ignores it; diffusers warns without it)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"prediction_type": "epsilon", "steps_offset": 1})


_SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    latent_channels=4,
    scaling_factor=0.18215,
)

_SD21_UNET = dict(
    sample_size=64,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)

_OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                   projection_dim=512, hidden_act="gelu")

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        unet=dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=8,
            cross_attention_dim=32,
            norm_num_groups=8,
            # attention only at the half-resolution level keeps large frames cheap on CPU
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        vae=dict(
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            scaling_factor=0.18215,
        ),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
    ),
    "sd-turbo-random": Preset(unet=_SD21_UNET, vae=_SD_VAE, text=_OPENCLIP_H),
    "sd15-random": Preset(
        unet=dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=8,
            cross_attention_dim=768,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ),
        vae=_SD_VAE,
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  projection_dim=768, hidden_act="quick_gelu"),
    ),
    "sd-turbo-reduced": Preset(
        unet={**_SD21_UNET, "block_out_channels": (80, 160, 320, 320), "attention_head_dim": (5, 10, 20, 20),
              "cross_attention_dim": 256,
              "norm_num_groups": 16},
        vae={**_SD_VAE, "block_out_channels": (32, 64, 128, 128), "norm_num_groups": 16},
        text={**_OPENCLIP_H, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
              "num_attention_heads": 4},
    ),
}

TINY_VAE_PRESETS: dict[str, dict[str, Any]] = {
    "taesd-random": dict(),
    "tiny-taesd": dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)),
}

TOKENIZER_MAX_LENGTH = 77


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by CLIP's byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def make_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer built in memory (vocabulary of 514, no merges)."""
    alphabet = _byte_alphabet()
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({ch + "</w>": len(alphabet) + i for i, ch in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TOKENIZER_MAX_LENGTH)


def build_preset(name: str, seed: int = 0) -> dict[str, Any]:
    """Components of a random-weight preset, deterministic for a given seed."""
    preset = PRESETS[name]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = make_tokenizer()
        text_config = CLIPTextConfig(vocab_size=max(1000, len(tokenizer)),
                                     max_position_embeddings=TOKENIZER_MAX_LENGTH,
                                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id, **preset.text)
        components = dict(
            unet=UNet2DConditionModel(**preset.unet),
            vae=AutoencoderKL(**preset.vae),
            text_encoder=CLIPTextModel(text_config),
            tokenizer=tokenizer,
            scheduler=LCMScheduler(**preset.scheduler),
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return components


def build_tiny_vae(name: str, seed: int = 0) -> AutoencoderTiny:
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return AutoencoderTiny(**TINY_VAE_PRESETS[name])
    finally:
        torch.random.set_rng_state(state)
