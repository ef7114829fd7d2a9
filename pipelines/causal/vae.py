"""The Wan video VAE (diffusers `AutoencoderKLWan`) encoded and decoded as a stream, chunk by chunk.

The Wan VAE is causal in time: every temporal convolution pads with the last frames it saw instead
of future ones, and diffusers' whole-clip `encode`/`decode` already walk the clip in pieces through
that conv cache (`feat_cache`): the encoder takes the first frame alone, then 4 frames at a time, each
piece giving one latent frame; the decoder takes one latent frame at a time (the first one gives 1
frame, every later one 4). The cache is a list of the last two input frames of every causal conv, so
it has a fixed size whatever the stream's length.

A stream here owns its caches (one per direction) and calls the VAE's encoder/decoder modules with
them, so consecutive calls continue where the previous one stopped and several streams can share
one VAE (diffusers keeps its own cache on the VAE object, reset by every whole-clip call; it is never
touched). Splitting a clip at piece boundaries therefore gives exactly the whole-clip result: frames
1 + 4n in, latent frames 1 + n out; the first call of a stream must start with the lone first frame.
Spatial tiling is not used.

A call is all or nothing: diffusers replaces the entries of the cache list it is given (the tensors
themselves are never written), so a call works on a new list and publishes it, with the new frame
count, only when it has finished. A raising call (Ctrl-C included) leaves the stream as it was, and
`snapshot()` is just references that `restore()` rebinds: the causal pipeline undoes a whole chunk
(encoder and decoder) that way, without copying a tensor.
"""
from __future__ import annotations

import torch

from livediff.errors import ConfigError, InputError

FRAMES_PER_LATENT = 4  # the encoder's temporal downsampling (two stride-2 stages)


def _check_vae(vae) -> None:
    if vae.config.patch_size is not None:
        raise ConfigError(f"Wan VAE with patch_size {vae.config.patch_size} (the Wan 2.2 layout) is not supported by "
                          f"the streaming VAE; the Wan 2.1 layout (patch_size None) is")
    if list(vae.config.temperal_downsample) != [False, True, True]:
        raise ConfigError(f"Wan VAE temperal_downsample {vae.config.temperal_downsample} is not supported; the stream "
                          f"expects Wan 2.1's [False, True, True] (4 frames per latent frame)")


def _conv_count(module) -> int:
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    return sum(isinstance(m, WanCausalConv3d) for m in module.modules())


class WanEncoderStream:
    """Frames in, latent means out: first call 1 + 4m frames (m ≥ 0), later calls 4m frames (m ≥ 1)."""

    def __init__(self, vae):
        _check_vae(vae)
        self.vae = vae
        self.cache: list = [None] * _conv_count(vae.encoder)
        self.frames = 0  # video frames encoded so far

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) frames in [-1, 1] → (B, z_dim, latent frames, H/8, W/8) latent means."""
        count = frames.shape[2] if frames.ndim == 5 else 0
        lead = 1 if self.frames == 0 else 0
        if frames.ndim != 5 or count < max(lead, 1) or (count - lead) % FRAMES_PER_LATENT:
            allowed = "1 + 4·m frames (the first frame alone, then whole groups of 4)" if lead else "4·m frames (m ≥ 1)"
            raise InputError(f"this call of the stream takes {allowed}, got frames of shape {tuple(frames.shape)}")
        pieces = [frames[:, :, :1]] if lead else []
        if count > lead:
            pieces += list(frames[:, :, lead:].split(FRAMES_PER_LATENT, dim=2))
        cache = list(self.cache)  # published at the end (module docstring: all or nothing)
        outs = [self.vae.encoder(piece, feat_cache=cache, feat_idx=[0]) for piece in pieces]
        moments = self.vae.quant_conv(torch.cat(outs, dim=2))
        self.cache, self.frames = cache, self.frames + count
        return moments[:, :self.vae.config.z_dim]

    def snapshot(self) -> tuple[list, int]:
        """The stream's state, as references (a call never edits a published cache list)."""
        return self.cache, self.frames

    def restore(self, snapshot: tuple[list, int]) -> None:
        """Back to a `snapshot()` of this stream, by rebinding."""
        self.cache, self.frames = snapshot

    def reset(self) -> None:
        self.cache = [None] * len(self.cache)
        self.frames = 0


class WanDecoderStream:
    """Latent frames in, frames out: the stream's first latent frame gives 1 frame, every later one 4."""

    def __init__(self, vae):
        _check_vae(vae)
        self.vae = vae
        self.cache: list = [None] * _conv_count(vae.decoder)
        self.latent_frames = 0  # latent frames decoded so far

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, z_dim, n, h, w) latents → (B, 3, frames, 8h, 8w) in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[2] < 1 or latents.shape[1] != self.vae.config.z_dim:
            raise InputError(f"latents of shape {tuple(latents.shape)} must be (batch, {self.vae.config.z_dim}, "
                             f"frames ≥ 1, height, width)")
        x = self.vae.post_quant_conv(latents)
        cache = list(self.cache)  # published at the end (module docstring: all or nothing)
        outs = [self.vae.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0],
                                 first_chunk=self.latent_frames + i == 0) for i in range(x.shape[2])]
        frames = torch.cat(outs, dim=2).clamp(-1.0, 1.0)
        self.cache, self.latent_frames = cache, self.latent_frames + x.shape[2]
        return frames

    def snapshot(self) -> tuple[list, int]:
        """The stream's state, as references (a call never edits a published cache list)."""
        return self.cache, self.latent_frames

    def restore(self, snapshot: tuple[list, int]) -> None:
        """Back to a `snapshot()` of this stream, by rebinding."""
        self.cache, self.latent_frames = snapshot

    def reset(self) -> None:
        self.cache = [None] * len(self.cache)
        self.latent_frames = 0


def cache_tensors(cache: list) -> list[torch.Tensor]:
    """The tensors a conv cache holds (entries may be None or diffusers' "Rep" marker before they fill)."""
    return [entry for entry in cache if isinstance(entry, torch.Tensor)]
