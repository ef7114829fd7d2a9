"""Random-weight Wan-layout models for tests, built from configs with a fixed seed (no download).

`tiny-wan-causal`: the Wan 2.1 transformer layout (patch (1, 2, 2), q/k RMS norm, rotary positions
split over time/height/width, cross-attention to text, 6-way modulation) at a size that runs in
milliseconds on CPU. Head dim 16 gives the temporal rotary part 8 dims (4 frequencies), so chunk
positions matter to the output.
"""
from __future__ import annotations

from typing import Any

import torch

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


def _seeded(build, seed: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build()
    finally:
        torch.random.set_rng_state(state)


def build_tiny_wan_causal(seed: int = 0, dtype: torch.dtype = torch.float32):
    """The `tiny-wan-causal` transformer with diffusers' own random initialisation, deterministic for a seed.

    float64 (the exactness tests) is reached with `.double()`: diffusers' `.to(dtype)` warns that its
    float32-only modules (rotary table, norms) would be cast, which matters below float32, not above.
    """
    from diffusers import WanTransformer3DModel

    model = _seeded(lambda: WanTransformer3DModel(**TINY_WAN_CAUSAL), seed)
    if dtype == torch.float64:
        model = model.double()
    elif dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()


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

    model = _seeded(lambda: AutoencoderKLWan(**TINY_WAN_VAE), seed)
    return (model.double() if dtype == torch.float64 else model.to(dtype)).eval()
