"""How a causal video chunk goes from one stage's sigma to the next: the two flow-matching samplers.

Flow matching writes a noisy latent as x_σ = (1 − σ)·x₀ + σ·ε and the transformer predicts the
velocity v = ε − x₀, so one prediction gives both x̂₀ = x − σ·v and ε̂ = x + (1 − σ)·v. The samplers
differ only in which noise the next stage is built from:

* "renoise" (the default): x_σ' = (1 − σ')·x̂₀ + σ'·ε' with fresh noise ε' from the stream's seeded
  generator. This is the sampler the DMD-distilled causal models (CausVid, Self-Forcing,
  StreamDiffusionV2) were trained and released with: their few-step generator is trained on inputs
  made exactly this way (a clean prediction re-noised with new Gaussian noise), so at each stage it
  sees the distribution it learned, which is why it is the default.
* "euler": x_σ' = x + (σ' − σ)·v, the update of diffusers' `FlowMatchEulerDiscreteScheduler.step`.
  Algebraically it is (1 − σ')·x̂₀ + σ'·ε̂: re-noising with the model's own noise estimate instead of
  fresh noise (deterministic, DDIM-like), the natural choice for a model trained as a plain
  flow-matching ODE (Wan 2.1 itself), not for the distilled ones.

After the last stage σ' = 0 and both give x̂₀ (no noise is drawn then), so with a single stage the two
samplers are the same computation and consume the same noise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from livediff.errors import ConfigError

if TYPE_CHECKING:  # the functions only do arithmetic on tensors: validating options imports no torch
    import torch

SAMPLERS = ("renoise", "euler")


def check_sampler(value: object) -> str:
    """`value` if it names a sampler, else a ConfigError naming it and the choices."""
    if value not in SAMPLERS:
        raise ConfigError(f"causal sampler {value!r} must be one of {', '.join(SAMPLERS)}")
    return value


def noised(clean: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)·x₀ + σ·ε: a clean latent taken to the flow-matching level σ."""
    return (1.0 - sigma) * clean + sigma * noise


def step(sampler: str, x: torch.Tensor, velocity: torch.Tensor, sigma: float, next_sigma: float,
         draw: Callable[[], torch.Tensor]) -> torch.Tensor:
    """x at `sigma` with the transformer's `velocity` → x at `next_sigma` (0 = the clean estimate).
    `draw()` gives fresh noise of x's shape; it is called only by "renoise" and only when next_sigma > 0,
    so the generator advances exactly once per re-noised stage."""
    if sampler == "euler":
        return x + (next_sigma - sigma) * velocity
    clean = x - sigma * velocity
    return noised(clean, next_sigma, draw()) if next_sigma > 0 else clean
