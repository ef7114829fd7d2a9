"""How a pipeline gets its networks run: it describes what it needs (`build_target`), asks
`accelerators` for a backend, and wraps its three base networks (`livediff.networks`) in runners.

A pipeline only ever calls `runners.unet(inputs)`, `runners.encode({"images": ...})` and
`runners.decode({"latents": ...})` with inputs by name, so the streaming maths is written once and
runs the same on every backend. A part with a network of its own (the UNet with the feature bank as
explicit inputs and outputs) gets it compiled, exported or built on the same backend with
`runners.runner_for(function)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from livediff.accelerators import AcceleratorOptions, Backend, BuildTarget, make_backend
from livediff.network_inputs import NamedRunner
from livediff.networks import TensorFunction, stream_networks
from livediff.pipelines.config import StreamConfig
from livediff.pipelines.models import ModelBundle, resolve_dtype
from livediff.pipelines.stream import stream_rows

TensorFn = Callable[..., Any]


@dataclass
class StreamRunners:
    """unet: noise prediction; encode: images in [-1,1] → scaled latents; decode: the inverse."""

    unet: NamedRunner | None  # None in video mode: it runs the banked UNet (`runner_for`) instead
    encode: NamedRunner
    decode: NamedRunner
    backend: Backend

    @property
    def name(self) -> str:
        return self.backend.name

    def runner_for(self, function: TensorFunction) -> NamedRunner:
        """A further pure tensor function run by the same backend as the base networks."""
        return NamedRunner(function, self.backend.runner(function))


def build_target(config: StreamConfig) -> BuildTarget:
    """What the backends build for, from the settings alone (so it is checked before weights load)."""
    return BuildTarget(device=torch.device(config.device), dtype=resolve_dtype(config.dtype, config.device),
                       height=config.height, width=config.width,
                       stream_rows=stream_rows(len(config.t_index_list), config.frame_buffer_size, config.cfg_type),
                       frame_rows=config.frame_buffer_size, model=config.model, loras=tuple(config.loras),
                       sessions=config.max_sessions)


def build_runners(config: StreamConfig, models: ModelBundle, options: AcceleratorOptions | dict | None = None,
                  progress=None) -> StreamRunners:
    """The stream networks of `models` on the backend `config.accelerator`: only those the mode
    calls (video mode never calls the plain UNet, so no graph or engine is built for it)."""
    backend = make_backend(config.accelerator, build_target(config), options, progress)
    networks = stream_networks(models)

    def named(function: TensorFunction) -> NamedRunner:
        return NamedRunner(function, backend.runner(function))

    unet = None if config.mode == "video" else named(networks["unet"])
    return StreamRunners(unet=unet, encode=named(networks["vae_encoder"]), decode=named(networks["vae_decoder"]),
                         backend=backend)
