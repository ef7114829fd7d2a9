"""Stream batch: one denoiser call advances every in-flight frame by one stage.

With n stages and F frames per call, the buffer holds (n−1)·F partially denoised latents,
ordered by stage (rows s·F … s·F+F−1 are at stage s+1). A call stacks the F new frames (noised
to stage 0) on top of the buffer, runs the UNet once on all n·F rows, then every frame moves
down one stage: the buffer shifts by F rows and the F oldest frames leave finished.

Noise per stage is drawn once per session (fixed noise is part of the temporal stability). The
first call warms the buffer from its own frames (n−1 single-stage calls), so the first outputs
are those frames fully denoised rather than half-denoised garbage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Mapping

import torch

from livediff.accelerators.base import RowRange
from livediff.errors import ConfigError
from livediff.network_inputs import NetworkInputs
from livediff.pipelines import rcfg
from livediff.pipelines.batching import DENOISE, FramePath, NetworkCall
from livediff.pipelines.choices import CFG_TYPES
from livediff.pipelines.nonfinite import NonFiniteCount
from livediff.pipelines.prompts import Conditioning
from livediff.pipelines.schedule import StageSchedule, add_noise, denoise

#: (latents, timesteps, inputs) → a frame path that yields the UNet call(s) and returns the noise
#: prediction; inputs: the UNet's other inputs by name, per row: the prompt's conditioning
#: (`rcfg.conditioning_rows`), then what travels with the frames (`StreamBatch.calls(carried=...)`:
#: ControlNet control images)
UNetCalls = Callable[[torch.Tensor, torch.Tensor, Mapping[str, torch.Tensor]],
                     Generator[NetworkCall, object, torch.Tensor]]


def unet_calls(unet: Callable[..., Any], row_unit: int = 0, constants: Mapping[str, torch.Tensor] | None = None
               ) -> UNetCalls:
    """A plain UNet runner (`runners.NamedRunner`) as the stream batch's UNet step (`row_unit`: see
    `NetworkCall`); `constants` are (1, ...) inputs every row of the call takes (ControlNet scales)."""

    def calls(latents: torch.Tensor, t: torch.Tensor, inputs: Mapping[str, torch.Tensor]):
        rows = {name: c.expand(latents.shape[0], *c.shape[1:]) for name, c in (constants or {}).items()}
        outputs = yield NetworkCall(DENOISE, ("unet", id(unet)), unet,
                                    NetworkInputs.join({"sample": latents, "timestep": t}, inputs, rows),
                                    row_unit=row_unit)
        return outputs["noise_pred"]

    return calls


def finite(x: torch.Tensor) -> torch.Tensor:
    """x with NaN and ±inf replaced by 0, on the device, without reading anything back.

    A non-finite prediction (an fp16 overflow on a GPU, a NaN frame) would otherwise stay in the
    in-flight latents and the residual stock forever; zeroed, the affected frames finish as flat
    pictures and the stream is clean again once they have left it (n frames later). `StreamBatch`
    counts them first (`pipelines.nonfinite`), so the flat frames have a visible cause.
    """
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def _cloned(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def stream_rows(steps: int, frames: int, cfg_type: str) -> RowRange:
    """How many rows the stream batch puts through the UNet in one call.

    Static-shape backends (TensorRT profiles, CUDA graphs) must know this in advance. With n stages,
    F frames per call and the CFG mode, the UNet is called with:

    * steady state: n·F rows; 2·n·F with `full` CFG; n·F + F with `initialize` (the real negative
      of the entering frames);
    * warm-up (first call after a reset): F rows per stage, 2·F for the first stage with `full` or
      `initialize`;
    * a guidance scale <= 1 turns the extra CFG rows off, so n·F is always possible.

    So every call lies in [F, steady]; the steady count is what backends optimise for.
    """
    if cfg_type not in CFG_TYPES:
        raise ConfigError(f"cfg_type {cfg_type!r} is not one of {', '.join(CFG_TYPES)}")
    if steps < 1 or frames < 1:
        raise ConfigError(f"steps {steps} and frames {frames} must both be at least 1")
    steady = steps * frames
    if cfg_type == "full":
        steady *= 2
    elif cfg_type == "initialize":
        steady += frames
    return RowRange(min=frames, opt=steady, max=steady)


@dataclass
class Guidance:
    """What the denoiser is steered towards; changed live without touching the buffers."""

    cond: Conditioning              # the prompt's
    uncond: Conditioning            # the negative prompt's
    cfg_type: str = "self"
    guidance_scale: float = 1.2
    delta: float = 1.0

    @property
    def residual(self) -> bool:
        return rcfg.uses_guidance(self.cfg_type, self.guidance_scale) and self.cfg_type in ("self", "initialize")


class StreamBatch:
    """The in-flight latents of a stream and the fixed per-stage noise."""

    def __init__(self, schedule: StageSchedule, latent_shape: tuple[int, int, int], generator: torch.Generator,
                 device: torch.device | str, dtype: torch.dtype, nonfinite: NonFiniteCount | None = None):
        """`nonfinite`: where the zeroed non-finite values are counted (the pipeline's, kept across
        streams; a new count by default)."""
        self.schedule = schedule
        self.nonfinite = nonfinite if nonfinite is not None else NonFiniteCount(device)
        self.frames = schedule.frames
        rows = schedule.steps * self.frames
        self.noise = torch.randn((rows, *latent_shape), generator=generator, device=generator.device,
                                 dtype=torch.float32).to(device=device, dtype=dtype)
        self.buffer: torch.Tensor | None = None
        self.stock: torch.Tensor | None = None
        self.carried: dict[str, torch.Tensor] = {}  # what travels with the in-flight frames, stage order
        self.call_stages: tuple[int, int] = (0, schedule.steps)

    @property
    def warmed(self) -> bool:
        return self.buffer is not None or self.schedule.steps == 1

    def reset(self) -> None:
        """Forget the in-flight frames (keeps the session noise)."""
        self.buffer = None
        self.stock = None
        self.carried = {}

    def state(self) -> dict[str, Any]:
        """The in-flight frames as plain data (`pipelines.stream_state`); the noise is not in it:
        it is drawn from the session seed when the batch is built."""
        return {"buffer": _cloned(self.buffer), "stock": _cloned(self.stock),
                "carried": {name: c.clone() for name, c in self.carried.items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Put back what `state()` gave (tensors moved to this batch's device and dtype)."""
        def here(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=self.noise.device, dtype=self.noise.dtype)

        buffer = here(state["buffer"])
        rows = (self.schedule.steps - 1) * self.frames
        if buffer is not None and buffer.shape != (rows, *self.noise.shape[1:]):
            raise ConfigError(f"stream state buffer has shape {tuple(buffer.shape)}, this stream holds "
                              f"{(rows, *self.noise.shape[1:])}; load a state saved with the same settings")
        self.buffer, self.stock = buffer, here(state["stock"])
        self.carried = {name: c.to(self.noise.device) for name, c in state["carried"].items()}

    def enter(self, x0: torch.Tensor, noised: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise new frames to stage 0; returns the latent and the noise it holds (its stock)."""
        if noised:
            return x0, x0
        noise = self.noise[: self.frames]
        return add_noise(x0, noise, self.schedule.alpha[: self.frames], self.schedule.beta[: self.frames]), noise

    def calls(self, x0: torch.Tensor, unet: UNetCalls, guidance: Guidance, noised: bool = False,
              carried: Mapping[str, torch.Tensor] | None = None) -> FramePath:
        """Feed F new frames' latents (or, txt2img, F noise latents with `noised`); the frame path
        yields its UNet calls (see `pipelines.batching`) and returns the F finished latents.

        `carried`: UNet inputs by name of F rows that belong to the new frames (ControlNet control
        images): they travel with their frames through the stages, so each UNet row gets its own
        frame's."""
        carried = dict(carried or {})
        x_t, stock = self.enter(x0, noised)
        if not self.warmed:
            yield from self._warm(x_t, stock, unet, guidance, carried)
        n, f = self.schedule.steps, self.frames
        if n > 1:
            x_t = torch.cat([x_t, self.buffer])
            stock = torch.cat([stock, self.stock if self.stock is not None else self.noise[f:]])
            carried = {name: torch.cat([new, self.carried[name]]) for name, new in carried.items()}
        denoised, guided, stock_used = yield from self._advance(x_t, stock, 0, n, unet, guidance, carried)
        if n > 1:
            moving, following = slice(0, (n - 1) * f), slice(f, n * f)
            self.buffer = self._renoise(denoised[:-f], following)
            self.stock = self._carry(guided[:-f], stock_used, moving, following)
            self.carried = {name: c[:-f] for name, c in carried.items()}
        return denoised[-f:]

    def _warm(self, x_t: torch.Tensor, stock: torch.Tensor, unet: UNetCalls, guidance: Guidance,
              carried: dict[str, torch.Tensor]) -> FramePath:
        """Denoise the first frames stage by stage, keeping each stage's latent as if they had entered earlier."""
        f = self.frames
        buffers, stocks = [], []
        for stage in range(self.schedule.steps - 1):
            denoised, guided, stock_used = yield from self._advance(x_t, stock, stage, stage + 1, unet, guidance,
                                                                    carried)
            current, following = slice(stage * f, (stage + 1) * f), slice((stage + 1) * f, (stage + 2) * f)
            x_t = self._renoise(denoised, following)
            carried_stock = self._carry(guided, stock_used, current, following)
            stock = carried_stock if carried_stock is not None else self.noise[following]
            buffers.append(x_t)
            stocks.append(stock)
        self.buffer = torch.cat(buffers)
        self.stock = torch.cat(stocks) if guidance.residual else None
        self.carried = {name: torch.cat([c] * (self.schedule.steps - 1)) for name, c in carried.items()}

    def _renoise(self, denoised: torch.Tensor, rows: slice) -> torch.Tensor:
        return add_noise(denoised, self.noise[rows], self.schedule.alpha[rows], self.schedule.beta[rows])

    def _advance(self, x_t: torch.Tensor, stock: torch.Tensor, first: int, last: int, unet: UNetCalls,
                 guidance: Guidance, carried: Mapping[str, torch.Tensor]) -> FramePath:
        """One UNet call on the rows of stages first..last−1; returns (denoised, guided ε, stock used)."""
        s, f = self.schedule, self.frames
        rows = slice(first * f, last * f)
        cfg_type = guidance.cfg_type
        if cfg_type == "initialize" and first > 0:
            cfg_type = "self"  # the real negative is only computed for frames entering stage 0
        latents = rcfg.unet_rows(x_t, cfg_type, guidance.guidance_scale, f)
        conditioning = rcfg.conditioning_rows(guidance.cond, guidance.uncond, x_t.shape[0], cfg_type,
                                              guidance.guidance_scale, f)
        t = rcfg.unet_rows(s.row_timesteps[rows], cfg_type, guidance.guidance_scale, f)
        self.call_stages = (first, last)  # parts that need each row's stage read it here, as Python ints
        carried = {name: rcfg.unet_rows(c, cfg_type, guidance.guidance_scale, f) for name, c in carried.items()}
        pred = yield from unet(latents, t, NetworkInputs.join(conditioning, carried))
        cond, uncond = rcfg.split_prediction(pred, cfg_type, guidance.guidance_scale, f)
        guided, stock_used = rcfg.guide(cond, uncond, stock, cfg_type, guidance.guidance_scale, guidance.delta, f)
        denoised = denoise(guided, x_t, s.alpha[rows], s.beta[rows], s.c_skip[rows], s.c_out[rows], s.prediction_type)
        self.nonfinite.add(denoised, guided)
        return finite(denoised), finite(guided), stock_used

    def _carry(self, guided: torch.Tensor, stock_used: torch.Tensor | None, current: slice,
               following: slice) -> torch.Tensor | None:
        """Residual stock for the rows moving from `current` rows to `following` rows (None when not residual)."""
        if stock_used is None:
            return None
        s = self.schedule
        coefficients = (s.alpha[current], s.beta[current], s.c_skip[current], s.c_out[current])
        used = stock_used[: guided.shape[0]]
        return rcfg.carry_stock(guided, used, coefficients, self.noise[following], s.alpha[following],
                                s.beta[following], s.prediction_type)
