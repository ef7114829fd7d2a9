"""Validated settings of a stream pipeline. Everything is checked at construction so a bad value
fails before any weights are loaded, with a message naming the value and the allowed range."""
from __future__ import annotations

from dataclasses import dataclass

from livediff.pipelines.bank.config import BankConfig
from livediff.errors import ConfigError
from livediff.pipelines.choices import CFG_TYPES, MODES
from livediff.pipelines.schedule import validate_t_index_list
from livediff.pipelines.similarity import SimilarityFilterConfig
from livediff.pipelines.token_merge import check_ratio

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
    device: str = "cuda"
    dtype: str = "float16"
    seed: int = 2
    accelerator: str = "eager"
    similarity_filter: SimilarityFilterConfig | None = None
    # mode "video" only. bank: None = the method's defaults, False = off, a dict of BankConfig
    # options or a BankConfig; after validation a BankConfig or False (None outside video mode).
    bank: BankConfig | dict | bool | None = None
    token_merge_ratio: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        self.t_index_list = validate_t_index_list(self.t_index_list)
        if self.cfg_type not in CFG_TYPES:
            raise ConfigError(f"cfg_type {self.cfg_type!r} is not one of {', '.join(CFG_TYPES)}")
        _check_size("width", self.width)
        _check_size("height", self.height)
        if not isinstance(self.frame_buffer_size, int) or not 1 <= self.frame_buffer_size <= MAX_FRAME_BUFFER:
            raise ConfigError(f"frame_buffer_size {self.frame_buffer_size!r} is outside 1..{MAX_FRAME_BUFFER}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed {self.seed!r} must be an integer")
        self.loras = tuple(self.loras)
        if isinstance(self.similarity_filter, dict):
            self.similarity_filter = SimilarityFilterConfig(**self.similarity_filter)
        self._check_video_parts()

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
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed {self.seed!r} must be an integer")

    @classmethod
    def from_config(cls, config: StreamConfig) -> "StreamSettings":
        return cls(config.t_index_list, config.cfg_type, config.seed, config.similarity_filter)
