"""Our pipeline with accelerations off equals diffusers' own img2img pipeline on the same model and noise."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionImg2ImgPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from livediff.pipelines import load_pipeline

SIZE = 64
TOLERANCE = 2e-5  # max abs difference of output pixels in [0, 1], fp32 on CPU


def _reference_pipeline(pipe):
    m = pipe.models
    return StableDiffusionImg2ImgPipeline(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet,
                                          scheduler=LCMScheduler.from_config(m.scheduler.config), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("t_index_list", [[10], [20, 40], [5, 25, 45]])
def test_full_cfg_matches_diffusers_img2img(t_index_list, monkeypatch):
    # We encode with the latent mean (deterministic per frame); make diffusers do the same.
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    pipe = load_pipeline(model="tiny", t_index_list=t_index_list, cfg_type="full", width=SIZE, height=SIZE,
                         device="cpu", dtype="float32")
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=3.0)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))

    # diffusers draws the image noise first, then one noise per non-final step, from one generator.
    generator = torch.Generator().manual_seed(42)
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape), generator=generator)
    ours = pipe(image)

    reference = _reference_pipeline(pipe)(
        prompt="oil painting", negative_prompt="blurry", image=image, strength=1.0,
        timesteps=[int(t) for t in pipe.schedule.timesteps], guidance_scale=3.0,
        generator=torch.Generator().manual_seed(42), output_type="pt").images

    assert ours.shape == reference.shape == (1, 3, SIZE, SIZE)
    assert (ours - reference).abs().max().item() < TOLERANCE
    # the comparison is meaningful: a different prompt moves the output well beyond the tolerance
    pipe.update_prompt("watercolor")
    pipe.reset()
    pipe.stream.noise = torch.randn((len(t_index_list), *pipe.latent_shape),
                                    generator=torch.Generator().manual_seed(42))
    assert (pipe(image) - reference).abs().max().item() > 100 * TOLERANCE


def test_txt2img_matches_diffusers_text_to_image():
    from diffusers import StableDiffusionPipeline

    pipe = load_pipeline(model="tiny", mode="txt2img", t_index_list=[0, 30], cfg_type="none", width=SIZE,
                         height=SIZE, device="cpu", dtype="float32")
    pipe.prepare(prompt="a red fox", guidance_scale=1.0)
    latents = torch.randn((1, *pipe.latent_shape), generator=torch.Generator().manual_seed(7))
    pipe._txt2img_noise = torch.Generator().manual_seed(7)  # our starting latents: the same draw
    step_noise = torch.randn((1, *pipe.latent_shape), generator=torch.Generator().manual_seed(11))
    pipe.stream.noise = torch.cat([torch.zeros_like(step_noise), step_noise])
    ours = np.asarray(pipe()).astype(np.float32) / 255

    m = pipe.models
    reference = StableDiffusionPipeline(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet,
                                        scheduler=LCMScheduler.from_config(m.scheduler.config), safety_checker=None,
                                        feature_extractor=None, requires_safety_checker=False)(
        prompt="a red fox", timesteps=[int(t) for t in pipe.schedule.timesteps], guidance_scale=1.0,
        latents=latents, generator=torch.Generator().manual_seed(11), output_type="np").images[0]
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 0.5 / 255 + 1e-5  # ours is rounded to uint8
