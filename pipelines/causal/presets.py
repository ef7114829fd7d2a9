"""Random-weight Wan-layout models for tests, built from configs with a fixed seed (no download).

`tiny-wan-causal`: the Wan 2.1 transformer layout (patch (1, 2, 2), q/k RMS norm, rotary positions
split over time/height/width, cross-attention to text, 6-way modulation) at a size that runs in
milliseconds on CPU. Head dim 16 gives the temporal rotary part 8 dims (4 frequencies), so chunk
positions matter to the output.

`wan-causal-random`: Wan 2.1 T2V 1.3B's transformer and video VAE layouts exactly (1.3B + 127M
parameters), with a one-layer UMT5 text encoder at UMT5-XXL's width; `wan-causal-reduced`: the same
depth and attention layout at a sixth of the transformer's width and a third of the VAE's, so a CPU
benchmark finishes in minutes. Both random: for speed and memory work (`benchmarks/causal_video.py`).
All three are loadable by name (`CAUSAL_PRESETS`, `models.load_causal_models`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from livediff.pipelines.presets import random_weights

TINY_WAN_CAUSAL: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=16,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)


def build_tiny_wan_causal(seed: int = 0, dtype: torch.dtype = torch.float32):
    """The `tiny-wan-causal` transformer with diffusers' own random initialisation, deterministic for a seed,
    on the CPU in `dtype` as `placement.place_network` sets it (below float32, the modules the model class
    keeps in float32 stay float32)."""
    from diffusers import WanTransformer3DModel

    from livediff.pipelines.placement import place_network

    return place_network(random_weights(seed, lambda: WanTransformer3DModel(**TINY_WAN_CAUSAL)), "cpu", dtype)


#: The Wan 2.1 video VAE layout (causal 3D convs, 8x spatial and 4x temporal compression) at 8 base channels.
TINY_WAN_VAE: dict[str, Any] = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True, True],
    latents_mean=[0.0] * 4,
    latents_std=[1.0] * 4,
)


def build_tiny_wan_vae(seed: int = 0, dtype: torch.dtype = torch.float32):
    """The tiny Wan VAE with diffusers' own random initialisation, deterministic for a seed."""
    from diffusers import AutoencoderKLWan

    from livediff.pipelines.placement import place_network

    # `place_network`, not `.to(dtype)`: diffusers' `.to` warns about an empty `_keep_in_fp32_modules`
    return place_network(random_weights(seed, lambda: AutoencoderKLWan(**TINY_WAN_VAE)), "cpu", dtype)


#: the tiny preset's text encoder (UMT5, Wan's text encoder family) at the tiny transformer's text width
TINY_UMT5: dict[str, Any] = dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                 relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                 vocab_size=1000)

#: `wan-causal-random`: the transformer of Wan 2.1 T2V 1.3B exactly (the `transformer/config.json` of
#: Wan-AI/Wan2.1-T2V-1.3B-Diffusers: 12 heads × 128 = 1536 wide, FFN 8960, 30 blocks, UMT5-XXL's 4096-wide
#: text input), random weights: for speed and memory work, never for pictures.
WAN_T2V_1_3B: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)

#: The Wan 2.1 video VAE as shipped (AutoencoderKLWan's defaults, which are the released VAE's config).
WAN_VAE: dict[str, Any] = dict(
    base_dim=96,
    z_dim=16,
    dim_mult=[1, 2, 4, 4],
    num_res_blocks=2,
    attn_scales=[],
    temperal_downsample=[False, True, True],
)

#: `wan-causal-reduced`: the same 30 blocks, 16 latent channels, patching, q/k norm and rotary split as the
#: 1.3B model at a sixth of its width (4 heads × 64 = 256, FFN 1024, text width 256), for CPU benchmarks.
#: Head dim 64 splits its rotary dims 24/20/20 over time/height/width (the 1.3B's 128: 44/42/42).
WAN_CAUSAL_REDUCED: dict[str, Any] = dict(WAN_T2V_1_3B, num_attention_heads=4, attention_head_dim=64,
                                          text_dim=256, ffn_dim=1024)

#: The reduced preset's video VAE: the real layout (stages, residual blocks, causal 3D convs, 16 latent
#: channels, 8x spatial and 4x temporal compression) at a third of the width (base 32 channels, not 96).
WAN_VAE_REDUCED: dict[str, Any] = dict(WAN_VAE, base_dim=32)

#: The text encoders (UMT5, Wan's family) of the speed presets. UMT5-XXL is 4.7B parameters and runs once
#: per prompt, so `wan-causal-random` keeps its width (d_model 4096, 64 heads × 64, d_ff 10240: the
#: transformer's cross-attention sees 4096-wide text as with the real one) but one layer instead of 24 and
#: the test tokenizer's 1,000-entry vocabulary instead of 256,384; `wan-causal-reduced` is 256 wide.
WAN_RANDOM_UMT5: dict[str, Any] = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                                       vocab_size=1000)
WAN_REDUCED_UMT5: dict[str, Any] = dict(d_model=256, d_kv=64, d_ff=1024, num_layers=1, num_heads=4,
                                        vocab_size=1000)


@dataclass(frozen=True)
class CausalPreset:
    """A random-weight causal video model set, built from configs (no download)."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]


CAUSAL_PRESETS: dict[str, CausalPreset] = {
    "tiny-wan-causal": CausalPreset(TINY_WAN_CAUSAL, TINY_WAN_VAE, TINY_UMT5),
    "wan-causal-reduced": CausalPreset(WAN_CAUSAL_REDUCED, WAN_VAE_REDUCED, WAN_REDUCED_UMT5),
    "wan-causal-random": CausalPreset(WAN_T2V_1_3B, WAN_VAE, WAN_RANDOM_UMT5),
}


def build_text_encoder(preset: str, tokenizer, seed: int = 0, device: str | torch.device = "cpu"):
    """The preset's UMT5 encoder (random, float32) for `tokenizer`'s pad/end tokens, on `device`."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        **CAUSAL_PRESETS[preset].text_encoder)
    with torch.device(device):
        return random_weights(seed, lambda: UMT5EncoderModel(config)).eval()


def build_wan_transformer(preset: str, seed: int = 0, device: str | torch.device = "cpu"):
    """The preset's `WanTransformer3DModel` (random, float32), built directly on `device` ("meta": shapes only)."""
    from diffusers import WanTransformer3DModel

    with torch.device(device):
        return random_weights(seed, lambda: WanTransformer3DModel(**CAUSAL_PRESETS[preset].transformer)).eval()


def build_wan_vae(preset: str, seed: int = 0, device: str | torch.device = "cpu"):
    """The preset's `AutoencoderKLWan` (random, float32) on `device`."""
    from diffusers import AutoencoderKLWan

    with torch.device(device):
        return random_weights(seed, lambda: AutoencoderKLWan(**CAUSAL_PRESETS[preset].vae)).eval()
