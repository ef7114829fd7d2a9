"""The one copy of the networks a UI server holds, and the lock every call into them takes.

Why one global lock rather than concurrent calls: every browser session has its own pipeline
objects (buffers, noise, prompt, feature bank: see `sessions.py`), but all of them run the same
UNet, VAE and text encoder. On one GPU concurrent calls would only interleave on the device (no
speed-up, more memory), and parts of a pipeline keep per-call state on the shared modules (e.g.
attention processors). Holding `Engine.lock` around every pipeline call, including prompt
encoding, resets and pipeline rebuilds, makes sharing safe by construction. Live frames do not
pay for it with one network call each: `Engine.batcher` runs the frames of every live session
together, in shared network runs.
"""
from __future__ import annotations

import threading
from typing import Any

from livediff.accelerators import registry
from livediff.app.build_progress import BuildReporter
from livediff.app.ui.batcher import DEFAULT_MAX_BATCH, DEFAULT_WAIT_S, LiveBatcher
from livediff.pipelines import load_pipeline
from livediff.pipelines.choices import MODES
from livediff.errors import ConfigError

#: Default mode of live streams and video files: V2V (feature bank) when this build has it.
DEFAULT_STREAM_MODE = "video" if "video" in MODES else "img2img"
STREAM_MODES = tuple(m for m in ("video", "img2img", "causal-video") if m in MODES)
#: The causal video stream mode (`pipelines.causal`, `causal_live.py`): the server then holds only its
#: causal pipeline, for the Webcam and Video tabs; the Image tab refuses with a sentence (`image_tab.py`).
CAUSAL_MODE = "causal-video"

#: What a session uses a pipeline for; each purpose gets its own pipeline per session, so a
#: webcam stream and a video job in the same browser tab never share buffers.
PURPOSES = ("webcam", "video", "img2img", "txt2img")


def fixed_row_backends() -> tuple[str, ...]:
    """Backends whose engines are built for a fixed range of rows (`BackendSpec.fixed_rows`): wider
    ranges cost build time and speed, so they batch sessions only when asked to."""
    return tuple(spec.name for spec in registry.specs() if spec.fixed_rows)


def session_batch_limit(accelerator: str, max_batch: int | None) -> int:
    """How many live sessions may share a network run: `max_batch`, or by default 8 (1 with a
    fixed-row backend such as TensorRT, whose engines are then built for one session's rows)."""
    if max_batch is None:
        return 1 if accelerator in fixed_row_backends() else DEFAULT_MAX_BATCH
    return max_batch


class Engine:
    """Loads one template pipeline per mode (the weights once, shared) and hands out new sessions of them.

    Building every template at start-up means a missing model or a bad setting fails when the
    server starts, not when the first person clicks.
    """

    def __init__(self, settings: dict[str, Any], stream_mode: str = DEFAULT_STREAM_MODE,
                 batch_wait_s: float = DEFAULT_WAIT_S, max_batch: int | None = None):
        if stream_mode not in STREAM_MODES:
            raise ConfigError(f"stream mode {stream_mode!r} is not one of {', '.join(STREAM_MODES)}")
        batch_limit = session_batch_limit(settings.get("accelerator", "eager"), max_batch)
        self.settings = {**settings, "max_sessions": batch_limit}  # engines with fixed row ranges fit the batches
        self.stream_mode = stream_mode
        self.modes = {"webcam": stream_mode, "video": stream_mode, "img2img": "img2img", "txt2img": "txt2img"}
        if stream_mode == CAUSAL_MODE:
            # a causal video model is no image model: streams of frames only, the webcam's and a video
            # file's (each session runs its own chunks, never batched with other sessions: `webcam_tab.py`)
            self.settings["max_sessions"] = 1
            self.modes = {"webcam": CAUSAL_MODE, "video": CAUSAL_MODE}
        elif "causal" in settings:
            raise ConfigError(f"causal options are for stream mode causal-video, not {stream_mode!r}")
        # txt2img has no input frame for a ControlNet to read: its template runs without them
        self.templates = {mode: load_pipeline(**{**self.settings, "mode": mode,
                                                 **({"controlnet": ()} if mode == "txt2img" else {})},
                                              progress=BuildReporter())
                          for mode in dict.fromkeys(self.modes.values())}
        self.lock = threading.Lock()
        self.batcher = LiveBatcher(self.lock, wait_s=batch_wait_s, max_batch=batch_limit)

    @property
    def stream_template(self):
        return self.templates[self.stream_mode]

    @property
    def width(self) -> int:
        return self.stream_template.config.width

    @property
    def height(self) -> int:
        return self.stream_template.config.height

    @property
    def description(self) -> str:
        config = self.stream_template.config
        if config.mode == CAUSAL_MODE:
            return (f"{config.model} (causal video, chunks of {config.causal.chunk_frames} latent frame(s)) · "
                    f"{self.stream_mode} · {config.width}x{config.height} · {config.device} {config.dtype} · "
                    f"{config.accelerator} · {len(config.t_index_list)} step(s)")
        family = {"sd": "SD 1.x/2.x", "sdxl": "SDXL"}[self.stream_template.models.family]
        return (f"{config.model} ({family}) · {self.stream_mode} · {config.width}x{config.height} · {config.device} "
                f"{config.dtype} · {config.accelerator} · {len(config.t_index_list)} step(s)")

    def template(self, purpose: str):
        if purpose not in self.modes:
            raise ValueError(f"unknown purpose {purpose!r}; one of {', '.join(PURPOSES)}")
        return self.templates[self.modes[purpose]]

    def new_pipeline(self, purpose: str, **config_overrides):
        """An independent pipeline over the shared networks (use it with `lock` held).

        `config_overrides` (bank, token merging) give a pipeline of another shape over the same
        networks: the same construction `new_session()` does, with a re-validated config. A causal
        video pipeline is built by `load_pipeline` again with the server's settings (and a video file's
        own width and height, the only overrides it takes): its networks come from the process's model
        cache (and an accelerator's graphs from its engine cache), so only the session's own state is new.
        """
        if self.modes.get(purpose) == CAUSAL_MODE:
            other = sorted(set(config_overrides) - {"width", "height"})
            if other:
                raise ConfigError(f"a causal video session takes no config overrides ({', '.join(other)})")
            return load_pipeline(**{**self.settings, **config_overrides, "mode": CAUSAL_MODE})
        return self.template(purpose).new_session(**config_overrides)
