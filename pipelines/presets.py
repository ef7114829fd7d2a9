"""Random-weight model presets that need no download.

* ``tiny``: a few MB, for unit tests. Same component types as Stable Diffusion (a UNet with
  cross-attention, an 8x-downsampling KL VAE, a CLIP text encoder) so every code path is real.
* ``sd-turbo-random`` / ``sd15-random``: the exact layer shapes of SD-Turbo (SD 2.1 layout) and
  SD 1.5. Speed does not depend on weight values, so these measure real throughput.
* ``sd-turbo-reduced``: the SD 2.1 layout at a quarter of the width, for CPU benchmarks.
* ``tiny-sdxl``, ``sdxl-turbo-random``, ``sdxl-turbo-reduced``: the same three roles for the SDXL
  family (two text encoders, pooled-text and size conditioning added to the time embedding,
  several transformer layers per block, attention at two resolutions only).

The tokenizer for presets is a byte-level CLIP tokenizer generated locally (no merges), so token
ids are real but short words become several tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer


@dataclass(frozen=True)
class Preset:
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    # steps_offset=1 as in the real SD 1.5 / 2.1 / SDXL scheduler configs (LCM ignores it; diffusers warns without it)
    scheduler: dict[str, Any] = field(default_factory=lambda: {"prediction_type": "epsilon", "steps_offset": 1})
    #: SDXL: the second text encoder (with a projection: its pooled output conditions the UNet)
    text_2: dict[str, Any] | None = None


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

# SDXL's UNet: no attention at the full-resolution level, 2 and 10 transformer layers per block
# below it; the added conditioning is the pooled text (projection_dim of text_2) and six size ids,
# each embedded with addition_time_embed_dim sinusoids: 1280 + 6·256 = 2816.
_SDXL_UNET = dict(
    sample_size=64,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
_SDXL_VAE = {**_SD_VAE, "scaling_factor": 0.13025}
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               projection_dim=768, hidden_act="quick_gelu")
_OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      projection_dim=1280, hidden_act="gelu")

PRESETS.update({
    "tiny-sdxl": Preset(
        unet=dict(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=64,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        ),
        vae={**PRESETS["tiny"].vae, "scaling_factor": 0.13025},
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        text_2=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    projection_dim=32),
    ),
    "sdxl-turbo-random": Preset(unet=_SDXL_UNET, vae=_SDXL_VAE, text=_CLIP_L, text_2=_OPENCLIP_BIGG),
    "sdxl-turbo-reduced": Preset(
        unet={**_SDXL_UNET, "block_out_channels": (80, 160, 320), "cross_attention_dim": 512,
              "addition_time_embed_dim": 64, "projection_class_embeddings_input_dim": 256 + 6 * 64,
              "norm_num_groups": 16},
        vae={**_SDXL_VAE, "block_out_channels": (32, 64, 128, 128), "norm_num_groups": 16},
        text={**_CLIP_L, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
              "num_attention_heads": 4, "projection_dim": 256},
        text_2={**_OPENCLIP_BIGG, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4,
                "num_attention_heads": 4, "projection_dim": 256},
    ),
})

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


T = TypeVar("T")


def random_weights(seed: int, build: Callable[[], T]) -> T:
    """`build()` with torch's global generator seeded by `seed`, then restored: random-weight
    networks are the same for a seed whatever ran before, and callers' randomness is untouched."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def build_preset(name: str, seed: int = 0) -> dict[str, Any]:
    """Components of a random-weight preset, deterministic for a given seed."""
    return random_weights(seed, lambda: _preset_components(PRESETS[name]))


def _preset_components(preset) -> dict[str, Any]:
    tokenizer = make_tokenizer()
    components = dict(
        unet=UNet2DConditionModel(**preset.unet),
        vae=AutoencoderKL(**preset.vae),
        text_encoder=CLIPTextModel(_text_config(tokenizer, preset.text)),
        tokenizer=tokenizer,
        scheduler=LCMScheduler(**preset.scheduler),
    )
    if preset.text_2 is not None:
        components["text_encoder_2"] = CLIPTextModelWithProjection(_text_config(tokenizer, preset.text_2))
        components["tokenizer_2"] = make_tokenizer()
        components["zero_empty_negative"] = True  # as SDXL's and SDXL-Turbo's force_zeros_for_empty_prompt
    return components


def _text_config(tokenizer: CLIPTokenizer, options: dict[str, Any]) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=max(1000, len(tokenizer)), max_position_embeddings=TOKENIZER_MAX_LENGTH,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **options)


def build_tiny_vae(name: str, seed: int = 0) -> AutoencoderTiny:
    return random_weights(seed, lambda: AutoencoderTiny(**TINY_VAE_PRESETS[name]))
