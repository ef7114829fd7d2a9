"""Building pipelines: the process-wide model cache and `load_pipeline`."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Literal, overload

from livediff.pipelines.config import StreamConfig
from livediff.pipelines.models import ModelBundle, load_models

if TYPE_CHECKING:
    from livediff.pipelines.causal.pipeline import CausalVideoPipeline
    from livediff.pipelines.stream_pipeline import StreamPipeline
    from livediff.pipelines.video_pipeline import VideoPipeline

_MODEL_CACHE: dict[tuple, ModelBundle] = {}
_MODEL_LOCK = threading.Lock()


def shared_models(model: str, vae: str | None, loras: tuple[str, ...], device: str, dtype: str,
                  controlnets: tuple[tuple[str, tuple[str, str] | None], ...] = (),
                  ip_adapter: tuple[str, str] | None = None) -> ModelBundle:
    """Load a model once per process; pipelines built with the same weights share it."""
    key = (model, vae, tuple(loras), device, dtype, tuple(controlnets), ip_adapter)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = load_models(model, vae=vae, loras=tuple(loras), device=device, dtype=dtype,
                                            controlnets=tuple(controlnets), ip_adapter=ip_adapter)
        return _MODEL_CACHE[key]


@overload
def load_pipeline(accelerator_options: Any = None, progress: Any = None, *, mode: Literal["video"],
                  **settings: Any) -> "VideoPipeline": ...


@overload
def load_pipeline(accelerator_options: Any = None, progress: Any = None, *, mode: Literal["causal-video"],
                  **settings: Any) -> "CausalVideoPipeline": ...


@overload
def load_pipeline(accelerator_options: Any = None, progress: Any = None, *, mode: Literal["img2img", "txt2img"],
                  **settings: Any) -> "StreamPipeline": ...


@overload
def load_pipeline(accelerator_options: Any = None, progress: Any = None, **settings: Any) -> Any: ...


def load_pipeline(accelerator_options=None, progress=None, **settings):
    """Build a streaming pipeline; every keyword is a `StreamConfig` field (validated before loading).

    Returns a `StreamPipeline` (img2img, txt2img), a `VideoPipeline` (video) or a `CausalVideoPipeline`
    (causal-video), by `mode` (type checkers see which when `mode` is written as a literal).

    `accelerator_options` (dict or `accelerators.AcceleratorOptions`) tunes the chosen accelerator,
    e.g. `{"cuda_graphs": False}` for `compile` or `{"cache_dir": ...}` for onnxruntime/tensorrt.
    `progress(network, message, done, total)` hears about graph exports and engine builds, which
    happen on first use of a size and setting (also later, for the video pipeline's banked UNet).
    """
    from livediff.accelerators import check_accelerator
    from livediff.pipelines.runners import build_runners, build_target
    from livediff.pipelines.stream_pipeline import StreamPipeline

    config = StreamConfig.from_settings(settings)
    if config.mode == "causal-video":
        return _causal_video_pipeline(config, accelerator_options, progress)
    options = check_accelerator(config.accelerator, build_target(config), accelerator_options)
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype,
                           config.control_networks(), config.adapter_networks())
    runners = build_runners(config, models, options, progress)
    if config.mode == "video":
        from livediff.pipelines.video_pipeline import VideoPipeline

        return VideoPipeline(config, models, runners)
    return StreamPipeline(config, models, runners)


def _causal_video_pipeline(config: StreamConfig, accelerator_options, progress=None):
    """Mode "causal-video" (`pipelines.causal.pipeline`): a Wan-layout transformer, video VAE and text
    encoder, shared per process like the image models; its transformer runs on the accelerator
    (`pipelines.causal.runners`)."""
    from livediff.pipelines.causal.models import load_causal_models
    from livediff.pipelines.causal.pipeline import CausalVideoPipeline
    from livediff.pipelines.causal.runners import check_options, make_causal_backend

    options = check_options(config, accelerator_options)  # before any weights load
    key = ("causal-video", config.model, config.device, config.dtype)
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = load_causal_models(config.model, config.device, config.dtype)
        models = _MODEL_CACHE[key]
    return CausalVideoPipeline(config, models, make_causal_backend(config, options, progress))
