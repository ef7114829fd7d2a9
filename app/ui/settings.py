"""The controls a person changes while a stream runs, and how they reach a pipeline without a reload.

Every UI event carries the current value of every control (see `server.py`), so a handler holds
the complete desired state; `apply_settings` turns the difference to what a pipeline last got
into the pipeline's live setters. Only what changed is touched: a new prompt re-encodes the text,
a new strength restarts the stream buffers, a new guidance does neither.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from livediff.pipelines.pixel_limit import DEFAULT_MAX_PIXELS
from livediff.app.ui.style import STYLE_NAMES, StyleImage, set_scale, set_style
from livediff.errors import ConfigError
from livediff.pipelines.choices import CFG_TYPES
from livediff.pipelines.schedule import TABLE_STEPS


CAUSAL_MODE = "causal-video"
#: The controls a causal video stream has no use for, and the sentence that refuses a change to them.
CAUSAL_REFUSALS = (
    (("negative_prompt", "guidance_scale", "delta", "cfg_type"),
     "guidance (negative prompt, guidance scale, delta, CFG mode) does not apply in causal-video mode: its models "
     "are distilled to run without classifier-free guidance"),
    (("similarity_filter", "similarity_threshold", "similarity_max_skip"),
     "the similarity filter does not apply in causal-video mode: every frame belongs to a chunk the model "
     "denoises whole, so none is skipped"),
    (("bank", "bank_cache_interval", "bank_max_frames", "bank_fusion_strength", "token_merge_ratio"),
     "the feature bank and token merging do not apply in causal-video mode: its memory of earlier frames is the "
     "transformer's K/V cache"),
    (("control_scales",), "ControlNet does not apply in causal-video mode"),
    (("style_image", "style_scale"), "a style image (IP-Adapter) does not apply in causal-video mode"),
)

_NUMBERS = ("strength", "guidance_scale", "delta", "similarity_threshold", "bank_fusion_strength", "token_merge_ratio")
_INTEGERS = ("seed", "similarity_max_skip", "bank_cache_interval", "bank_max_frames")


@dataclass(frozen=True)
class LiveSettings:
    """One value per UI control, in the order the controls are passed to handlers."""

    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 0.36
    guidance_scale: float = 1.2
    delta: float = 1.0
    cfg_type: str = "self"
    seed: int = 2
    similarity_filter: bool = False
    similarity_threshold: float = 0.98
    similarity_max_skip: int = 10
    # mode "video" only: the feature bank and token merging (see `pipeline_overrides`)
    bank: bool = True
    bank_cache_interval: int = 4
    bank_max_frames: int = 1
    bank_fusion_strength: float = 0.8
    token_merge_ratio: float = 0.0
    # one scale per ControlNet of the server's pipelines (0 = that ControlNet off); empty without
    # ControlNets. Shown as one control each, named `control_scale_<i>` (see `names`)
    control_scales: tuple[float, ...] = ()
    # IP-Adapter (see `style.py`): the style picture (None = none) and its scale; the scale is None
    # on servers without an IP-Adapter, which have neither control
    style_image: StyleImage | None = None
    style_scale: float | None = None

    def __post_init__(self) -> None:
        """Types and the ranges the pipeline setters do not check; the setters check the rest."""
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise ConfigError("prompt and negative prompt must be text")
        for name in _NUMBERS + _INTEGERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(f"{name.replace('_', ' ')} {value!r} must be a number")
            if name in _INTEGERS:
                if int(value) != value:
                    raise ConfigError(f"{name.replace('_', ' ')} {value!r} must be an integer")
                object.__setattr__(self, name, int(value))
        if not 0 < self.strength <= 1:
            raise ConfigError(f"strength {self.strength!r} is outside (0, 1]")
        if self.cfg_type not in CFG_TYPES:
            raise ConfigError(f"cfg mode {self.cfg_type!r} is not one of {', '.join(CFG_TYPES)}")
        if self.similarity_max_skip < 0:
            raise ConfigError(f"similarity max skip {self.similarity_max_skip!r} must be >= 0")
        if not isinstance(self.control_scales, (tuple, list)):
            raise ConfigError(f"controlnet scales {self.control_scales!r} must be a list of numbers")
        scales = []
        for i, value in enumerate(self.control_scales):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
                raise ConfigError(f"controlnet {i + 1} scale {value!r} must be a number in 0..2")
            scales.append(float(value))
        object.__setattr__(self, "control_scales", tuple(scales))
        object.__setattr__(self, "style_image", StyleImage.of(self.style_image))
        if self.style_scale is not None:
            value = self.style_scale
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
                raise ConfigError(f"style scale {value!r} must be a number in 0..2")
            object.__setattr__(self, "style_scale", float(value))
        elif self.style_image is not None:
            raise ConfigError("a style image needs an IP-Adapter (start the server with --ip-adapter)")

    @classmethod
    def names(cls, controlnets: int = 0, ip_adapter: bool = False) -> list[str]:
        """The controls' names in handler order: one per field, `control_scale_<i>` per ControlNet
        in place of the `control_scales` tuple, then `style_image`, `style_scale` with an IP-Adapter
        (a server without ControlNets or IP-Adapter has none of them)."""
        plain = [f.name for f in fields(cls) if f.name not in ("control_scales", *STYLE_NAMES)]
        return plain + [f"control_scale_{i}" for i in range(controlnets)] + list(STYLE_NAMES if ip_adapter else ())

    @classmethod
    def from_values(cls, values: tuple[Any, ...] | list[Any], controlnets: int = 0,
                    ip_adapter: bool = False) -> "LiveSettings":
        """Build from control values in `names(controlnets, ip_adapter)` order (how Gradio passes them)."""
        names = cls.names(controlnets, ip_adapter)
        if len(values) != len(names):
            raise ConfigError(f"expected {len(names)} settings ({', '.join(names)}), got {len(values)}")
        plain = len(names) - controlnets - (len(STYLE_NAMES) if ip_adapter else 0)
        return cls(**dict(zip(names[:plain], values[:plain])), control_scales=tuple(values[plain:plain + controlnets]),
                   **dict(zip(STYLE_NAMES, values[plain + controlnets:])))

    def by_name(self) -> dict[str, Any]:
        """The values keyed by `names(...)` (how API clients pass them); the style ones only with an
        IP-Adapter (`style_scale` set)."""
        values = {name: getattr(self, name) for name in self.names()}
        values.update({f"control_scale_{i}": s for i, s in enumerate(self.control_scales)})
        if self.style_scale is not None:
            values.update(style_image=self.style_image, style_scale=self.style_scale)
        return values

    @classmethod
    def for_pipeline(cls, pipe, **overrides) -> "LiveSettings":
        """The settings a freshly built pipeline already has, so the first diff touches nothing else."""
        config = pipe.config
        strength = round(1 - config.t_index_list[0] / TABLE_STEPS, 4)
        values = dict(strength=strength, cfg_type=config.cfg_type, seed=config.seed,
                      control_scales=tuple(spec.scale for spec in config.controlnet),
                      style_scale=pipe.ip_scale if getattr(pipe.models, "ip_adapter", None) is not None else None)
        if config.mode == CAUSAL_MODE:
            values.update(guidance_scale=1.0)  # no guidance: the value that changes nothing
        if config.similarity_filter is not None:
            values.update(similarity_filter=True, similarity_threshold=config.similarity_filter.threshold,
                          similarity_max_skip=config.similarity_filter.max_skip)
        if config.mode == "video":
            values.update(bank=bool(config.bank), token_merge_ratio=config.token_merge_ratio)
            if config.bank:
                values.update(bank_cache_interval=config.bank.cache_interval, bank_max_frames=config.bank.max_frames,
                              bank_fusion_strength=config.bank.fusion_strength)
        return cls(**{**values, **overrides})


def pipeline_overrides(template_config, settings: LiveSettings) -> dict[str, Any]:
    """The pipeline-config part of the settings: the bank and token merging shape the denoiser call
    (bank buffers, attention layout), so a change builds a new pipeline over the same networks
    instead of a setter. Options the UI has no control for keep the server's values. Empty for
    modes without earlier frames (img2img, txt2img)."""
    if template_config.mode != "video":
        return {}
    from livediff.pipelines.bank.config import BankConfig  # part of the video pipeline, imported only with it

    bank: Any = False
    if settings.bank:
        base = template_config.bank or BankConfig()
        bank = replace(base, cache_interval=settings.bank_cache_interval, max_frames=settings.bank_max_frames,
                       fusion_strength=settings.bank_fusion_strength)
    return {"bank": bank, "token_merge_ratio": settings.token_merge_ratio}


def prepare(pipe, settings: LiveSettings) -> None:
    """First prompt and guidance of a new pipeline (a causal one: the prompt; see `CAUSAL_REFUSALS`)."""
    if pipe.config.mode == CAUSAL_MODE:
        pipe.prepare(prompt=settings.prompt)
        return
    pipe.prepare(prompt=settings.prompt, negative_prompt=settings.negative_prompt,
                 guidance_scale=settings.guidance_scale, delta=settings.delta)


def apply_settings(pipe, applied: LiveSettings, wanted: LiveSettings,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[LiveSettings, str | None]:
    """Bring `pipe` from `applied` to `wanted`, one change at a time.

    Returns what the pipeline now has and, if a change was refused (e.g. a strength too low for
    the number of steps), the reason; the changes before it stay applied, so a bad value never
    leaves the pipeline half-configured. A style picture above `max_pixels` is refused unread. A causal video pipeline: see `_apply_causal`.
    """
    if pipe.config.mode == CAUSAL_MODE:
        return _apply_causal(pipe, applied, wanted)
    steps = (
        (("prompt", "negative_prompt"), lambda s: pipe.update_prompt(s.prompt, s.negative_prompt)),
        (("guidance_scale", "delta", "cfg_type"),
         lambda s: pipe.set_guidance(guidance_scale=s.guidance_scale, delta=s.delta, cfg_type=s.cfg_type)),
        (("strength",), lambda s: pipe.set_strength(s.strength)),
        (("seed",), lambda s: pipe.set_seed(s.seed)),
        (("similarity_filter", "similarity_threshold", "similarity_max_skip"),
         lambda s: pipe.set_similarity_filter(s.similarity_threshold if s.similarity_filter else None,
                                              s.similarity_max_skip)),
        (("control_scales",), lambda s: _set_control_scales(pipe, applied.control_scales, s.control_scales)),
        (("style_image",), lambda s: set_style(pipe, s.style_image, max_pixels)),
        (("style_scale",), lambda s: set_scale(pipe, s.style_scale)),
    )
    for names, setter in steps:
        applied, refused = _apply_step(names, setter, applied, wanted)
        if refused:
            return applied, refused
    return applied, None


def _apply_step(names: tuple[str, ...], setter, applied: LiveSettings,
                wanted: LiveSettings) -> tuple[LiveSettings, str | None]:
    """One group of controls: nothing to do when they are unchanged; else `setter(wanted)` and the
    group marked applied, or the pipeline's refusal and the group left as it was."""
    if all(getattr(applied, n) == getattr(wanted, n) for n in names):
        return applied, None
    try:
        setter(wanted)
    except ConfigError as exc:
        return applied, str(exc)
    return replace(applied, **{n: getattr(wanted, n) for n in names}), None


def _set_control_scales(pipe, applied: tuple[float, ...], wanted: tuple[float, ...]) -> None:
    """Only the scales that changed: each is a live value of the pipeline (0 = off, no rebuild)."""
    if len(wanted) != len(applied):
        raise ConfigError(f"{len(wanted)} ControlNet scale(s) given; this pipeline has {len(applied)} ControlNet(s)")
    for index, (old, new) in enumerate(zip(applied, wanted)):
        if old != new:
            pipe.set_controlnet_scale(index, new)


def _apply_causal(pipe, applied: LiveSettings, wanted: LiveSettings) -> tuple[LiveSettings, str | None]:
    """A causal video pipeline takes the prompt, strength and seed; a change to any other control is
    refused with its sentence (`CAUSAL_REFUSALS`) on every frame while it stands, never silently
    ignored; the controls it does take are applied all the same."""
    steps = ((("prompt",), lambda s: pipe.update_prompt(s.prompt)),
             (("strength",), lambda s: pipe.set_strength(s.strength)),
             (("seed",), lambda s: pipe.set_seed(s.seed)))
    notices = []
    for names, setter in steps:
        applied, refused = _apply_step(names, setter, applied, wanted)
        if refused:
            notices.append(refused)
    notices += [sentence for names, sentence in CAUSAL_REFUSALS
                if any(getattr(applied, n) != getattr(wanted, n) for n in names)]
    return applied, "; ".join(notices) or None
