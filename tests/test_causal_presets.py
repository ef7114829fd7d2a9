"""The speed presets of the causal video path (issue 16, item 5): `wan-causal-random` is Wan 2.1 T2V
1.3B's transformer and video VAE layout exactly (checked on the `meta` device: shapes, no memory);
`wan-causal-reduced` runs a chunk on the CPU; both load by name like `tiny-wan-causal`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from livediff.errors import ConfigError
from livediff.pipelines import load_pipeline
from livediff.pipelines.causal.models import load_causal_models
from livediff.pipelines.causal.presets import CAUSAL_PRESETS, TINY_WAN_CAUSAL, TINY_WAN_VAE

#: parameters of Wan-AI/Wan2.1-T2V-1.3B-Diffusers: transformer/ (5.68 GB in float32) and vae/ (508 MB)
WAN_1_3B_TRANSFORMER = 1_418_996_800
WAN_VAE = 126_892_531


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_wan_causal_random_is_the_1_3b_layout_on_meta():
    models = load_causal_models("wan-causal-random", "meta", "float16")
    config = models.transformer.config
    assert (config.num_attention_heads, config.attention_head_dim, config.ffn_dim, config.num_layers) == (12, 128,
                                                                                                           8960, 30)
    assert (tuple(config.patch_size), config.in_channels, config.text_dim, config.freq_dim) == ((1, 2, 2), 16, 4096,
                                                                                                 256)
    assert config.qk_norm == "rms_norm_across_heads" and config.cross_attn_norm and config.eps == 1e-6
    assert count(models.transformer) == WAN_1_3B_TRANSFORMER
    assert count(models.vae) == WAN_VAE
    vae = models.vae.config
    assert (vae.base_dim, vae.z_dim, list(vae.dim_mult), vae.num_res_blocks) == (96, 16, [1, 2, 4, 4], 2)
    assert list(vae.temperal_downsample) == [False, True, True]
    # the text encoder is one UMT5 layer at UMT5-XXL's width: the cross-attention sees 4096-wide text
    assert models.text_encoder.config.d_model == 4096 and models.text_encoder.config.num_layers == 1
    for net, dtype in ((models.transformer, torch.float16), (models.vae, torch.float32),
                       (models.text_encoder, torch.float16)):
        assert all(p.device.type == "meta" for p in net.parameters()) and net.dtype == dtype


def test_wan_causal_random_runs_a_chunk_on_meta():
    """The whole pipeline at Wan's native 480x832 on the meta device: a 1.3B chunk without memory."""
    pipe = load_pipeline(model="wan-causal-random", mode="causal-video", width=832, height=480, device="meta",
                         dtype="float16", t_index_list=[32, 45])
    pipe.text = torch.zeros(1, 16, 4096, dtype=torch.float16, device="meta")
    latents = torch.zeros(1, 16, 1, 60, 104, dtype=torch.float16, device="meta")
    out = pipe.denoise(latents)
    assert out.shape == latents.shape and pipe.cache.chunks == 1
    # 30 layers × keys and values × 5 slots × 1560 tokens × 1536 × 2 bytes, plus the fill mask
    assert pipe.cache.nbytes == 30 * 2 * 5 * 1560 * 1536 * 2 + 5 * 1560


def test_wan_causal_reduced_keeps_the_layout_narrower_and_runs_a_chunk_on_cpu():
    reduced, full = (CAUSAL_PRESETS[n].transformer for n in ("wan-causal-reduced", "wan-causal-random"))
    same = ("patch_size", "num_layers", "in_channels", "out_channels", "freq_dim", "qk_norm", "cross_attn_norm")
    assert {k: reduced[k] for k in same} == {k: full[k] for k in same}
    assert reduced["num_attention_heads"] * reduced["attention_head_dim"] < full["num_attention_heads"] * 128
    pipe = load_pipeline(model="wan-causal-reduced", mode="causal-video", width=64, height=64, device="cpu",
                         dtype="float32", t_index_list=[32, 45], seed=3)
    pipe.prepare(prompt="a watercolour street")
    rng = np.random.default_rng(0)
    out = pipe(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))  # the first chunk is one frame
    assert len(out) == 1 and out[0].shape == (64, 64, 3) and out[0].dtype == np.uint8
    assert pipe.cache.chunks == 1 and pipe.models.transformer.config.num_layers == 30


def test_tiny_preset_is_unchanged_and_unknown_names_list_the_presets():
    assert CAUSAL_PRESETS["tiny-wan-causal"].transformer is TINY_WAN_CAUSAL
    assert CAUSAL_PRESETS["tiny-wan-causal"].vae is TINY_WAN_VAE
    with pytest.raises(ConfigError, match="wan-causal-reduced, wan-causal-random"):
        load_causal_models("no-such-causal-model", "cpu", "float32")
