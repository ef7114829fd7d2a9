"""The Wan video VAE as a stream (issue 16, item 3(c)): encoded and decoded chunk by chunk, it equals
diffusers' whole-clip `encode`/`decode` wherever the clip is cut at the model's own piece boundaries
(the lone first frame, then groups of 4 frames per latent frame), float64, 1e-9."""
from __future__ import annotations

import pytest
import torch

from livediff.errors import ConfigError, InputError
from livediff.pipelines.causal.presets import TINY_WAN_VAE, build_tiny_wan_vae
from livediff.pipelines.causal.vae import WanDecoderStream, WanEncoderStream, cache_tensors

TOL = 1e-9
F64 = torch.float64


@pytest.fixture(scope="module")
def vae():
    return build_tiny_wan_vae(seed=0, dtype=F64)


def clip(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, frames, 16, 16, generator=g, dtype=F64) * 2 - 1


def cut(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(x.split(sizes, dim=2))


@torch.no_grad()
def test_encoding_chunk_by_chunk_equals_the_whole_clip(vae):
    x = clip(1 + 4 * 4, seed=1)
    whole = vae.encode(x).latent_dist.mode()
    stream = WanEncoderStream(vae)
    chunked = torch.cat([stream(part) for part in cut(x, [1, 4, 8, 4])], dim=2)
    assert chunked.shape == whole.shape == (2, TINY_WAN_VAE["z_dim"], 5, 2, 2)
    assert (chunked - whole).abs().max() < TOL
    # the first chunk may carry groups of 4 after the lone first frame
    again = WanEncoderStream(vae)
    assert (torch.cat([again(part) for part in cut(x, [5, 12])], dim=2) - whole).abs().max() < TOL


@torch.no_grad()
def test_decoding_chunk_by_chunk_equals_the_whole_clip(vae):
    z = torch.randn(2, TINY_WAN_VAE["z_dim"], 5, 2, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    whole = vae.decode(z).sample
    stream = WanDecoderStream(vae)
    chunked = torch.cat([stream(part) for part in cut(z, [1, 2, 1, 1])], dim=2)
    assert chunked.shape == whole.shape == (2, 3, 1 + 4 * 4, 16, 16)
    assert (chunked - whole).abs().max() < TOL


@torch.no_grad()
def test_streams_own_their_caches(vae):
    """Two interleaved streams and a whole-clip call in between (which resets the VAE's own cache) do not
    disturb each other."""
    a, b = clip(9, seed=3), clip(9, seed=4)
    expected_a, expected_b = vae.encode(a).latent_dist.mode(), vae.encode(b).latent_dist.mode()
    sa, sb = WanEncoderStream(vae), WanEncoderStream(vae)
    parts_a, parts_b = [sa(a[:, :, :1])], [sb(b[:, :, :1])]
    vae.encode(clip(5, seed=5))
    for lo in (1, 5):
        parts_a.append(sa(a[:, :, lo:lo + 4]))
        parts_b.append(sb(b[:, :, lo:lo + 4]))
    assert (torch.cat(parts_a, 2) - expected_a).abs().max() < TOL
    assert (torch.cat(parts_b, 2) - expected_b).abs().max() < TOL


@torch.no_grad()
def test_conv_caches_have_a_fixed_size(vae):
    x = clip(1 + 4 * 10, seed=6)
    encoder, decoder = WanEncoderStream(vae), WanDecoderStream(vae)
    seen = {}
    decoder(encoder(x[:, :, :1]))
    for i in range(10):
        latent = encoder(x[:, :, 1 + 4 * i:5 + 4 * i])
        decoder(latent)
        if i + 1 in (3, 10):
            seen[i + 1] = [tuple(t.shape) for t in cache_tensors(encoder.cache) + cache_tensors(decoder.cache)]
    assert seen[3] == seen[10]
    assert max(shape[2] for shape in seen[10]) == 2  # at most two frames per causal conv


def test_cuts_inside_a_piece_and_other_layouts_are_refused(vae):
    stream = WanEncoderStream(vae)
    with pytest.raises(InputError, match=r"1 \+ 4·m frames"):
        stream(clip(4, seed=7))
    stream(clip(1, seed=7))
    with pytest.raises(InputError, match=r"4·m frames \(m ≥ 1\)"):
        stream(clip(3, seed=7))
    from diffusers import AutoencoderKLWan

    other = AutoencoderKLWan(**{**TINY_WAN_VAE, "temperal_downsample": [False, False, True]})
    with pytest.raises(ConfigError, match="temperal_downsample"):
        WanEncoderStream(other)
