"""The runner interface: how the pipelines call their networks, whatever the backend.

A pipeline only ever calls `runners.unet(sample, timesteps, text)`, `runners.encode(images)` and
`runners.decode(latents)`, so the streaming maths is written once and every backend (eager,
compile, ONNX Runtime, TensorRT) plugs in underneath.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch


class UNetRunner(Protocol):
    def __call__(self, sample: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...


ImageFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Runners:
    """unet: noise prediction; encode: images in [-1,1] → scaled latents; decode: the inverse."""

    unet: UNetRunner
    encode: ImageFn
    decode: ImageFn
    name: str = "eager"
