"""Classifier-free guidance variants for the stream batch, as pure functions.

Classic CFG (`full`) runs every row twice (unconditional + conditional). Residual CFG replaces the
unconditional prediction with a *stock noise* S, an estimate of the noise each row's latent holds:

* `self`: the negative is δ·S with no extra UNet rows. For a new frame S is the noise we just
  injected (exactly the noise in its latent); for later stages it is carried down with the frame.
* `initialize`: the first stage's S is the real unconditional prediction (one extra row per new
  frame), then carried down the stages the same way.

Guided ε = δS + g·(ε_cond − δS). After a stage, the frame's S for its next stage is
    S' = n' + (α'/β') · denoise(ε, β·S)
where n', α', β' belong to the next stage: the injected noise plus the part of the current
estimate that the boundary step attributes to noise.
"""
from __future__ import annotations

import torch

from livediff.pipelines.prompts import Conditioning
from livediff.pipelines.schedule import denoise


def uses_guidance(cfg_type: str, guidance_scale: float) -> bool:
    return cfg_type != "none" and guidance_scale > 1.0


def unet_rows(x_t: torch.Tensor, cfg_type: str, guidance_scale: float, frames: int) -> torch.Tensor:
    """The latent rows of the one UNet call: extra rows first (unconditional), then the stream rows."""
    if not uses_guidance(cfg_type, guidance_scale):
        return x_t
    if cfg_type == "full":
        return torch.cat([x_t, x_t])
    if cfg_type == "initialize":
        return torch.cat([x_t[:frames], x_t])
    return x_t


def conditioning_rows(cond: Conditioning, uncond: Conditioning, rows: int, cfg_type: str, guidance_scale: float,
                      frames: int) -> dict[str, torch.Tensor]:
    """The prompt conditioning matching `unet_rows` row by row, by input name (`Conditioning.inputs`),
    every tensor laid out the same way."""
    cond_inputs, uncond_inputs = cond.inputs, uncond.inputs
    if cond_inputs.keys() != uncond_inputs.keys():
        raise ValueError(f"the prompt and the negative prompt condition different inputs: "
                         f"{sorted(cond_inputs.keys() ^ uncond_inputs.keys())}")
    return {name: _condition_rows(c, uncond_inputs[name], rows, cfg_type, guidance_scale, frames)
            for name, c in cond_inputs.items()}


def _condition_rows(cond: torch.Tensor, uncond: torch.Tensor, rows: int, cfg_type: str, guidance_scale: float,
                    frames: int) -> torch.Tensor:
    cond_rows = cond.expand(rows, *cond.shape[1:])
    if not uses_guidance(cfg_type, guidance_scale):
        return cond_rows
    if cfg_type == "full":
        return torch.cat([uncond.expand(rows, *uncond.shape[1:]), cond_rows])
    if cfg_type == "initialize":
        return torch.cat([uncond.expand(frames, *uncond.shape[1:]), cond_rows])
    return cond_rows


def split_prediction(pred: torch.Tensor, cfg_type: str, guidance_scale: float, frames: int):
    """Split the UNet output back into (conditional, unconditional-or-None)."""
    if not uses_guidance(cfg_type, guidance_scale):
        return pred, None
    if cfg_type == "full":
        uncond, cond = pred.chunk(2)
        return cond, uncond
    if cfg_type == "initialize":
        return pred[frames:], pred[:frames]
    return pred, None


def guide(cond: torch.Tensor, uncond: torch.Tensor | None, stock: torch.Tensor | None, cfg_type: str,
          guidance_scale: float, delta: float, frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Guided prediction, and the stock noise actually used as negative (None when not residual).

    For `initialize` the first `frames` rows of the stock are replaced by the real unconditional
    prediction `uncond` before use.
    """
    if not uses_guidance(cfg_type, guidance_scale):
        return cond, None
    if cfg_type == "full":
        return uncond + guidance_scale * (cond - uncond), None
    if cfg_type == "initialize":
        stock = torch.cat([uncond, stock[frames:]])
    negative = delta * stock
    return negative + guidance_scale * (cond - negative), stock


def carry_stock(guided: torch.Tensor, stock: torch.Tensor, coefficients, next_noise: torch.Tensor,
                next_alpha: torch.Tensor, next_beta: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Stock noise of rows moving on to their next stage.

    `coefficients` are the (alpha, beta, c_skip, c_out) rows of the stage just computed; the
    `next_*` tensors belong to the stage each row moves to.
    """
    alpha, beta, c_skip, c_out = coefficients
    current = denoise(guided, beta * stock, alpha, beta, c_skip, c_out, prediction_type)
    return next_noise + next_alpha / next_beta * current
