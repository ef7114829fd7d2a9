"""Validated settings of a stream pipeline. Everything is checked at construction so a bad value
fails before any weights are loaded, with a message naming the value and the allowed range."""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, fields

import torch

from livediff.errors import ConfigError
from livediff.pipelines import checks
from livediff.pipelines.bank.config import BankConfig
from livediff.pipelines.control import parse_controlnets
from livediff.pipelines.ip_adapter import IPAdapterSpec
from livediff.pipelines.choices import CFG_TYPES, DTYPE_NAMES, MAX_SESSIONS, MODES
from livediff.pipelines.schedule import validate_t_index_list
from livediff.pipelines.similarity import SimilarityFilterConfig
from livediff.pipelines.token_merge import check_ratio

log = logging.getLogger(__name__)

MIN_SIZE, MAX_SIZE = 64, 2048
MAX_FRAME_BUFFER = 16


def _check_size(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name} {value!r} must be an integer")
    if value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
        raise ConfigError(f"{name} {value} must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE}")
    return value


@dataclass
class StreamConfig:
    model: str = "stabilityai/sd-turbo"
    mode: str = "img2img"
    t_index_list: tuple[int, ...] = (32, 45)
    cfg_type: str = "self"
    width: int = 512
    height: int = 512
    frame_buffer_size: int = 1
    vae: str | None = None
    loras: tuple[str, ...] = ()
    # "auto": CUDA when available, else CPU; dtype "auto": float16 on CUDA, float32 on CPU. Both are
    # resolved here, so cache keys and backends only ever see a real device and precision.
    device: str = "auto"
    dtype: str = "auto"
    seed: int = 2
    accelerator: str = "eager"
    similarity_filter: SimilarityFilterConfig | None = None
    # mode "video" only. bank: None = the method's defaults, False = off, a dict of BankConfig
    # options or a BankConfig; after validation a BankConfig or False (None outside video mode).
    bank: BankConfig | dict | bool | None = None
    token_merge_ratio: float = 0.0
    # how many sessions' frames one network run may carry (`pipelines.batching`); engines with a fixed
    # row range (TensorRT) are built for that many
    max_sessions: int = 1
    # ControlNets (`pipelines.control`): a model name, a dict of `ControlNetSpec` options, or a list of
    # them; after validation a tuple of ControlNetSpec (empty: none)
    controlnet: tuple = ()
    # IP-Adapter (`pipelines.ip_adapter`): a dict of `IPAdapterSpec` options; after validation a spec or None
    ip_adapter: IPAdapterSpec | dict | None = None
    # mode "causal-video" only (`pipelines.causal.options`): a dict of CausalVideoOptions (chunk_frames,
    # sink_chunks, window_chunks, cache_after, context_timestep, flow_shift) or one; after validation
    # a CausalVideoOptions in that mode, None in the others
    causal: object = None

    def adapter_networks(self) -> tuple[str, str] | None:
        """(IP-Adapter weights, image encoder) to load, without the live scale."""
        return (self.ip_adapter.model, self.ip_adapter.image_encoder) if self.ip_adapter else None

    def control_networks(self) -> tuple[tuple[str, tuple[str, str] | None], ...]:
        """(ControlNet, (preprocessor, its network) or None) per ControlNet: what to load, no live values."""
        return tuple((spec.model, spec.preprocessor_network) for spec in self.controlnet)

    @classmethod
    def from_settings(cls, settings: dict) -> "StreamConfig":
        """`StreamConfig(**settings)` with unknown keywords named instead of a TypeError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(known))}")
        return cls(**settings)

    def __post_init__(self):
        checks.text("model", self.model)
        if self.vae is not None:
            checks.text("vae", self.vae)
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        self.t_index_list = validate_t_index_list(self.t_index_list)
        if self.cfg_type not in CFG_TYPES:
            raise ConfigError(f"cfg_type {self.cfg_type!r} is not one of {', '.join(CFG_TYPES)}")
        _check_size("width", self.width)
        _check_size("height", self.height)
        checks.whole("frame_buffer_size", self.frame_buffer_size, 1, MAX_FRAME_BUFFER)
        checks.whole("max_sessions", self.max_sessions, 1, MAX_SESSIONS)
        checks.seed(self.seed)
        if isinstance(self.loras, str) or not all(isinstance(lora, str) for lora in self.loras):
            raise ConfigError(f"loras {self.loras!r} must be a list of hub ids or paths")
        self.loras = tuple(self.loras)
        self.similarity_filter = SimilarityFilterConfig.from_setting(self.similarity_filter)
        self.device = resolve_device(self.device)
        self.dtype = resolve_dtype_name(self.dtype, self.device)
        self._check_video_parts()
        self.controlnet = parse_controlnets(self.controlnet)
        if self.controlnet and self.mode == "txt2img":
            raise ConfigError("controlnet conditions on the input frames; mode 'txt2img' has none (use img2img or "
                              "video)")
        self.ip_adapter = IPAdapterSpec.parse(self.ip_adapter)
        self._check_causal_parts()

    def _check_causal_parts(self) -> None:
        """Mode "causal-video" runs a Wan-layout transformer chunk by chunk (`pipelines.causal`): its own
        options are validated here and the image pipelines' options that it has no use for are refused."""
        from livediff.pipelines.causal.options import CausalVideoOptions
        from livediff.pipelines.causal.runners import unsupported_accelerator

        if self.mode != "causal-video":
            if self.causal is not None:
                raise ConfigError(f"causal is a mode 'causal-video' option; mode {self.mode!r} runs no causal video "
                                  f"transformer")
            return
        self.causal = CausalVideoOptions.from_setting(self.causal)
        refused = [(self.vae is not None, "vae (a tiny image VAE; the causal path decodes with the Wan video VAE)"),
                   (bool(self.loras), "loras"),
                   (bool(self.controlnet), "controlnet"),
                   (self.ip_adapter is not None, "ip_adapter"),
                   (self.similarity_filter is not None, "similarity_filter"),
                   (self.frame_buffer_size != 1, "frame_buffer_size other than 1 (frames are collected into chunks)"),
                   (self.max_sessions != 1, "max_sessions other than 1"),
                   (unsupported_accelerator(self.accelerator) is not None,
                    f"accelerator {self.accelerator!r} ({unsupported_accelerator(self.accelerator)})"),
                   (self.cfg_type in ("full", "initialize"),
                    f"cfg_type {self.cfg_type!r} (distilled causal models run without classifier-free guidance)")]
        names = [name for bad, name in refused if bad]
        if names:
            raise ConfigError(f"mode 'causal-video' does not support {'; '.join(names)}")
        for name in ("width", "height"):
            if getattr(self, name) % 16:
                raise ConfigError(f"{name} {getattr(self, name)} must be a multiple of 16 in mode 'causal-video' (the "
                                  f"video VAE's 8x and the transformer's 2x2 patches)")

    def _check_video_parts(self) -> None:
        self.token_merge_ratio = check_ratio(self.token_merge_ratio)
        if self.mode != "video":
            if self.bank not in (None, False):
                raise ConfigError(f"bank is a mode 'video' option; mode {self.mode!r} has no earlier frames to bank")
            if self.token_merge_ratio:
                raise ConfigError(f"token_merge_ratio is a mode 'video' option (mode {self.mode!r}); use mode='video' "
                                  f"with bank=False for token merging alone")
            self.bank = None
            return
        self.bank = BankConfig.from_setting(self.bank)
        if self.bank and self.bank.sparse and self.token_merge_ratio:
            raise ConfigError(f"bank sparse_keep_ratio {self.bank.sparse_keep_ratio} selects banked tokens by position "
                              f"and token_merge_ratio {self.token_merge_ratio} merges positions away; use one of them")


@dataclass(frozen=True)
class StreamSettings:
    """The settings a stream runs with *now*: they start as the built `StreamConfig`'s and change
    live (strength, CFG mode, seed, similarity filter) without touching the config as built.

    Frozen and validated at construction: a live change builds a new value first, so a rejected
    change leaves the running stream exactly as it was.
    """

    t_index_list: tuple[int, ...]
    cfg_type: str
    seed: int
    similarity_filter: SimilarityFilterConfig | None = None

    def __post_init__(self):
        object.__setattr__(self, "t_index_list", validate_t_index_list(self.t_index_list))
        if self.cfg_type not in CFG_TYPES:
            raise ConfigError(f"cfg_type {self.cfg_type!r} is not one of {', '.join(CFG_TYPES)}")
        checks.seed(self.seed)
        if self.similarity_filter is not None and not isinstance(self.similarity_filter, SimilarityFilterConfig):
            raise ConfigError(f"similarity_filter {self.similarity_filter!r} must be None or a SimilarityFilterConfig")

    @classmethod
    def from_config(cls, config: StreamConfig) -> "StreamSettings":
        return cls(config.t_index_list, config.cfg_type, config.seed, config.similarity_filter)


def resolve_device(device) -> str:
    """`auto` → cuda when available, else cpu; anything else must exist on this machine (`meta`, the
    data-less stand-in for a GPU in dry runs, always does)."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.version.cuda:
            warn_cuda_build_without_gpu()
        return "cpu"
    if not isinstance(device, str):
        raise ConfigError(f"device {device!r} must be a string such as 'auto', 'cuda', 'cuda:1' or 'cpu'")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is not a device; use 'auto', 'cuda', 'cuda:N', 'cpu' or 'mps'") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but this torch has no usable CUDA (no NVIDIA GPU or a "
                              f"CPU-only build); use device 'cpu' or 'auto'")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asked for, but Apple's MPS is not available here; use 'cpu' or 'auto'")
    elif parsed.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"device {device!r} is not supported; use 'auto', 'cuda', 'cpu' or 'mps'")
    elif parsed.type == "meta" and parsed.index is not None:
        raise ConfigError(f"device {device!r}: the meta device has no index; use 'meta'")
    return device


@functools.cache
def warn_cuda_build_without_gpu() -> None:
    """Once per process: a CUDA build of torch that finds no GPU makes `auto` the CPU, tens of times
    slower, which looks like a slow GPU unless it is said. The usual cause is a driver older than the
    CUDA the wheel was built for (or a container started without the GPU)."""
    log.warning("torch %s is built for CUDA %s but sees no GPU, so device 'auto' runs on the CPU: the NVIDIA "
                "driver is probably too old for CUDA %s (`nvidia-smi` must show CUDA Version %s or newer) or, in "
                "Docker, the container was started without `--gpus all`; update the driver or install a torch "
                "built for the CUDA your driver supports (pass device 'cpu' to choose the CPU on purpose)",
                torch.__version__, torch.version.cuda, torch.version.cuda, torch.version.cuda)


def resolve_dtype_name(dtype, device: str) -> str:
    """`auto` → float16 on a GPU (and on meta, which stands in for one), float32 on the CPU."""
    if not isinstance(dtype, str) or dtype not in ("auto", *DTYPE_NAMES):
        raise ConfigError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPE_NAMES)}")
    if dtype == "auto":
        return "float32" if torch.device(device).type == "cpu" else "float16"
    return dtype
