"""Eager PyTorch: the reference backend every other backend is compared with."""
from __future__ import annotations

import torch
from diffusers import AutoencoderTiny

from accelerators.base import Runners


class EagerUNet:
    def __init__(self, unet):
        self.module = unet

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.module(sample, timesteps, encoder_hidden_states=text, return_dict=False)[0]


class EagerVaeEncoder:
    """Images → latents scaled for the UNet. Uses the distribution's mean, not a sample, so the
    same frame always gives the same latent (a sample would add flicker)."""

    def __init__(self, vae):
        self.module = vae
        self.scale = vae.config.scaling_factor
        self.tiny = isinstance(vae, AutoencoderTiny)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        encoded = self.module.encode(images)
        latents = encoded.latents if self.tiny else encoded.latent_dist.mean
        return latents * self.scale


class EagerVaeDecoder:
    def __init__(self, vae):
        self.module = vae
        self.scale = vae.config.scaling_factor

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.module.decode(latents / self.scale, return_dict=False)[0]


def eager_runners(models) -> Runners:
    return Runners(unet=EagerUNet(models.unet), encode=EagerVaeEncoder(models.vae),
                   decode=EagerVaeDecoder(models.vae), name="eager")
