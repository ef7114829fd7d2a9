"""What the batch job drives: a frame processor, built by a picklable factory where it runs.

The job knows nothing about diffusion. It is given a **processor factory**: a picklable callable
returning a :class:`FrameProcessor` (``processor(rgb) -> rgb`` plus ``reset()``). The real one is
:class:`PipelineFactory` (the livediff video pipeline); tests use tiny deterministic processors.
The factory, not a processor, is what callers pass, because a model must be built *where it runs*
(one per Ray worker) and only when there is work to do.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from livediff.pipelines.pixel_limit import DEFAULT_MAX_PIXELS


@runtime_checkable
class FrameProcessor(Protocol):
    """What the job drives, one frame at a time, in order.

    ``__call__`` takes an HxWx3 uint8 RGB frame and returns one of the same kind (any size: it is
    resized to the output size). ``reset()`` forgets all temporal state; the job calls it before
    every file. Optional ``width``/``height`` attributes (ints) declare the size the processor
    wants its input in; without them it receives frames at the input's size. An optional
    ``identity()`` returns a JSON-able description of everything that changes its output: a resumed
    run must match it, or two styles would be mixed in one file.

    A processor that returns frames late (the causal video pipeline collects chunks of frames) has a
    ``flush()`` method: its ``__call__`` then returns a list of the frames it finished (possibly empty,
    oldest first) and ``flush()`` the frames still held at the end of a file, so that every input
    frame has exactly one output frame, in order.

    A processor whose temporal state can be saved has ``save_state(path)`` and ``load_state(path)``:
    the job saves it with every segment and, on resume, loads it after ``reset()``, so the frames after
    the resume point are those of an uninterrupted run (see `segments`).
    """

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


#: Builds a processor. Must be picklable (a top-level class instance or a functools.partial of a
#: top-level function) when used with Ray; called once per worker, lazily.
ProcessorFactory = Callable[[], FrameProcessor]


class PipelineProcessor:
    """Adapts a livediff video pipeline (``pipe(frame)``, ``pipe.reset()``) to :class:`FrameProcessor`.

    ``lock``: a pipeline whose networks other callers share (the UI's live tabs, `app.ui.engine`) is
    called under their lock, once per frame, so they keep getting frames while a file is processed.
    """

    def __init__(self, pipe: Any, prompt: Mapping[str, Any], style: Mapping[str, Any] | None = None,
                 lock: contextlib.AbstractContextManager | None = None):
        self.pipe, self.prompt, self.style = pipe, dict(prompt), dict(style or {})
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self.width, self.height = pipe.config.width, pipe.config.height

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.pipe(rgb)

    def reset(self) -> None:
        with self.lock:
            self.pipe.reset()

    def identity(self) -> dict[str, Any]:
        """The pipeline as built (model, VAE, LoRAs, mode, steps, CFG, seed, size, bank, token merging,
        accelerator and precision), its live settings, the prompt, and the weights' fingerprints."""
        from dataclasses import asdict

        from livediff.accelerators.engine_cache import weights_fingerprint

        networks = getattr(self.pipe, "networks", None)
        if callable(networks):  # pipelines of other model families name their own networks
            return {"pipeline": asdict(self.pipe.config), "live": asdict(self.pipe.settings), "prompt": self.prompt,
                    "style": self.style,
                    "weights": {name: weights_fingerprint(net) for name, net in networks().items()}}
        models = self.pipe.models
        weights = {"unet": weights_fingerprint(models.unet), "vae": weights_fingerprint(models.vae),
                   "text_encoder": weights_fingerprint(models.text_encoder)}
        if models.text_encoder_2 is not None:
            weights["text_encoder_2"] = weights_fingerprint(models.text_encoder_2)
        if models.ip_adapter is not None:
            weights["ip_adapter"] = weights_fingerprint(models.ip_adapter)
        return {"pipeline": asdict(self.pipe.config), "live": asdict(self.pipe.settings), "prompt": self.prompt,
                "style": self.style, "weights": weights}


class StatefulPipelineProcessor(PipelineProcessor):
    """A pipeline whose stream state can be saved and loaded (``stream_state()``, ``load_stream_state``)."""

    def save_state(self, path: Path) -> None:
        """Write the stream state to ``path`` (``torch.save``: tensors and plain values only)."""
        import torch

        with self.lock:
            state = self.pipe.stream_state()
        torch.save(state, path)

    def load_state(self, path: Path) -> None:
        import torch

        state = torch.load(path, map_location=self.pipe.device, weights_only=True)
        with self.lock:
            self.pipe.load_stream_state(state)


class DelayedPipelineProcessor(StatefulPipelineProcessor):
    """A pipeline that returns the frames it finished, late (``pipe(frame) -> list``, ``pipe.flush()``);
    its saved state includes the frames it holds (the causal video pipeline)."""

    def __call__(self, rgb: np.ndarray) -> list[np.ndarray]:
        with self.lock:
            return list(self.pipe(rgb))

    def flush(self) -> list[np.ndarray]:
        with self.lock:
            return list(self.pipe.flush())


def pipeline_processor(pipe: Any, prompt: Mapping[str, Any], style: Mapping[str, Any] | None = None,
                       lock: contextlib.AbstractContextManager | None = None) -> PipelineProcessor:
    """The adapter for `pipe`: a pipeline with ``flush()`` returns its frames late (mode causal-video),
    one with ``stream_state()`` can save its state for an exact resume (the stream and video pipelines)."""
    if callable(getattr(pipe, "flush", None)):
        return DelayedPipelineProcessor(pipe, prompt, style, lock)
    if callable(getattr(pipe, "stream_state", None)):
        return StatefulPipelineProcessor(pipe, prompt, style, lock)
    return PipelineProcessor(pipe, prompt, style, lock)


@dataclass(frozen=True)
class PipelineFactory:
    """Picklable factory for a livediff pipeline, built in the process that runs it (one per Ray worker).

    ``settings`` are ``pipelines.load_pipeline`` keywords, ``prompt`` are ``prepare`` keywords;
    ``strength`` (optional) is applied with ``set_strength``. The job calls ``reset()`` between files.
    """

    settings: Mapping[str, Any]
    prompt: Mapping[str, Any]
    strength: float | None = None
    style_image: str | None = None  # with an IP-Adapter: the style picture's path
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # the style picture's largest size (`--max-pixels`)

    def __call__(self) -> FrameProcessor:
        from livediff.app.build_progress import BuildReporter
        from livediff.pipelines import load_pipeline  # heavy import, only where the model runs

        pipe = load_pipeline(**dict(self.settings), progress=BuildReporter())
        if self.strength is not None:
            pipe.set_strength(self.strength)
        pipe.prepare(**dict(self.prompt))
        style = None
        if self.style_image is not None:
            from livediff.app.pictures import RAISE_WITH_OPTION, read_picture

            pipe.set_style_image(read_picture(self.style_image, self.max_pixels, how_to_raise=RAISE_WITH_OPTION))
            style = {"style_image": self.style_image,
                     "sha256": hashlib.sha256(Path(self.style_image).read_bytes()).hexdigest()}
        return pipeline_processor(pipe, self.prompt, style)


class LazyProcessor:
    """Builds the processor on first use and remembers a build failure (which aborts a batch)."""

    def __init__(self, factory: ProcessorFactory):
        self.factory = factory
        self.processor: FrameProcessor | None = None
        self.build_error: BaseException | None = None

    def get(self) -> FrameProcessor:
        if self.processor is None:
            try:
                processor = self.factory()
            except BaseException as exc:
                self.build_error = exc
                raise
            if not callable(processor) or not callable(getattr(processor, "reset", None)):
                self.build_error = TypeError(
                    f"processor factory {self.factory!r} returned {type(processor).__name__}, "
                    "which lacks __call__(rgb) and reset()"
                )
                raise self.build_error
            self.processor = processor
        return self.processor


def check_output_frame(out: Any, processor: Any) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
        got = f"{out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"processor {type(processor).__name__} must return an HxWx3 uint8 RGB array, got {got}")
    return out
