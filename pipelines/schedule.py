"""The few-step schedule: which timesteps each stream-batch stage uses and their coefficients.

Step-distilled models (LCM-LoRA, SD-Turbo) are sampled on a table of 50 LCM timesteps
(999, 979, ..., 19); `t_index_list` picks the stages from it. A larger first index means less
noise is added to the input frame, i.e. a weaker edit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import LCMScheduler

from livediff.errors import ConfigError
from livediff.pipelines.checks import number

TABLE_STEPS = 50


def validate_t_index_list(t_index_list) -> tuple[int, ...]:
    if isinstance(t_index_list, (str, bytes)) or not hasattr(t_index_list, "__iter__"):
        raise ConfigError(f"t_index_list {t_index_list!r} must be a list of increasing indices in "
                          f"0..{TABLE_STEPS - 1}, e.g. [32, 45]")
    indices = tuple(t_index_list)
    if not indices:
        raise ConfigError("t_index_list is empty; give at least one index in 0..49")
    for i in indices:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < TABLE_STEPS:
            raise ConfigError(f"t_index_list value {i!r} is outside 0..{TABLE_STEPS - 1}")
    if any(b <= a for a, b in zip(indices, indices[1:])):
        raise ConfigError(f"t_index_list {list(indices)} must be strictly increasing (less noise at each stage)")
    return indices


def strength_to_t_index_list(strength: float, steps: int) -> tuple[int, ...]:
    """Map a user strength in (0, 1] to `steps` stage indices.

    Strength 1 starts from pure noise (index 0); strength s starts at index floor(50·(1−s)). The
    remaining stages are spread evenly up to index 45 (t=99), where distilled models finish well;
    when the start is past that, up to 49.
    """
    number("strength", strength, 0, 1, low_open=True)
    first = min(TABLE_STEPS - 1, int(TABLE_STEPS * (1 - strength) + 1e-9))
    if steps == 1:
        return (first,)
    last = 45 if first <= 45 - (steps - 1) else TABLE_STEPS - 1
    if last - first < steps - 1:
        max_strength = 1 - (TABLE_STEPS - steps) / TABLE_STEPS
        raise ConfigError(f"strength {strength} leaves fewer than {steps} distinct stages; "
                          f"use a strength of at least {max_strength:.2f} or fewer steps")
    return tuple(round(first + k * (last - first) / (steps - 1)) for k in range(steps))


@dataclass
class StageSchedule:
    """Per-stage coefficients, one row per stream-batch row (stages repeated `frames` times)."""

    timesteps: torch.Tensor  # (n,) long
    alpha: torch.Tensor      # sqrt(alpha_cumprod), (rows, 1, 1, 1)
    beta: torch.Tensor       # sqrt(1 - alpha_cumprod)
    c_skip: torch.Tensor
    c_out: torch.Tensor
    frames: int
    prediction_type: str

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def row_timesteps(self) -> torch.Tensor:
        return self.timesteps.repeat_interleave(self.frames)

    @classmethod
    def build(cls, scheduler: LCMScheduler, t_index_list, frames: int, device, dtype) -> "StageSchedule":
        indices = validate_t_index_list(t_index_list)
        table = lcm_timestep_table(scheduler)
        timesteps = torch.tensor([table[i] for i in indices], dtype=torch.long)
        alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)[timesteps]
        scalings = [scheduler.get_scalings_for_boundary_condition_discrete(int(t)) for t in timesteps]

        def rows(values) -> torch.Tensor:
            column = torch.as_tensor(values, dtype=torch.float64).repeat_interleave(frames)
            return column.view(-1, 1, 1, 1).to(device=device, dtype=dtype)

        return cls(
            timesteps=timesteps.to(device),
            alpha=rows(alphas_cumprod.sqrt()),
            beta=rows((1 - alphas_cumprod).sqrt()),
            c_skip=rows([float(s) for s, _ in scalings]),
            c_out=rows([float(o) for _, o in scalings]),
            frames=frames,
            prediction_type=scheduler.config.prediction_type,
        )


def lcm_timestep_table(scheduler: LCMScheduler) -> list[int]:
    scheduler.set_timesteps(TABLE_STEPS)
    return [int(t) for t in scheduler.timesteps]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return alpha * x0 + beta * noise


def denoise(model_output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
            c_skip: torch.Tensor, c_out: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The consistency-model boundary step, for every row at once: x_t → denoised estimate of x0."""
    if prediction_type == "epsilon":
        x0 = (x_t - beta * model_output) / alpha
    elif prediction_type == "v_prediction":
        x0 = alpha * x_t - beta * model_output
    elif prediction_type == "sample":
        x0 = model_output
    else:
        raise ConfigError(f"prediction_type {prediction_type!r} is not one of epsilon, v_prediction, sample")
    return c_out * x0 + c_skip * x_t
