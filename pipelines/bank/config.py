"""Validated settings of the feature bank (StreamV2V-style temporal memory of earlier frames).

Defaults follow the method: update every 4 frames, one frame of memory kept as a merged memory,
fusion above cosine 0.98 with a 0.8 blend in the mid block and the first decoder block that has
attention, dense (not sparse) bank, scene-cut reset on.
"""
from __future__ import annotations

from dataclasses import dataclass

from livediff.errors import ConfigError
from livediff.pipelines import checks

MAX_BANK_FRAMES = 16
MAX_CACHE_INTERVAL = 1000


def _check_int(name: str, value, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"bank {name} {value!r} must be an integer in {low}..{high}")
    return value


def _check_float(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"bank {name} {value!r} must be a number")
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ConfigError(f"bank {name} {value!r} is outside {interval}")
    return float(value)


@dataclass
class BankConfig:
    """How the bank is read, written and bounded.

    cache_interval: the bank is written on every `cache_interval`-th processed frame (1 = every frame).
    max_frames: memory size in frames per stage. FIFO keeps exactly the last `max_frames` written
        frames; the merged memory keeps `max_frames` frames' worth of tokens forever.
    merge: False = FIFO; True = fixed-size merged memory (bipartite soft matching of old + new
        tokens, a seeded random partition, so memory is O(1) in video length and runs reproduce).
    fusion_threshold / fusion_strength: an output token of a fusion layer whose best cosine match
        among the banked outputs is above the threshold becomes
        (1 − strength)·own + strength·banked. A threshold above 1 never fuses.
    fusion_blocks: UNet blocks whose self-attention outputs are fused, e.g. ("mid_block",
        "up_blocks.1"); None = the method's default (mid block + first decoder block with
        attention); () = no fusion (extended attention only).
    sparse_keep_ratio: 1 = dense bank. Below 1, each banked frame keeps this fraction of its tokens:
        all tokens of moving regions first (latent frame difference above `motion_threshold`,
        relative to the latent's standard deviation), the rest a fixed uniform sample of the static
        ones, weighted so a frame keeps its full attention mass.
    scene_cut_threshold: structural change (1 − correlation of small grey thumbnails, 0..2) above
        which consecutive input frames count as a scene cut and the bank is reset; None disables.
    seed: seeds the merge partition and the static-token sample.
    """

    cache_interval: int = 4
    max_frames: int = 1
    merge: bool = True
    fusion_threshold: float = 0.98
    fusion_strength: float = 0.8
    fusion_blocks: tuple[str, ...] | None = None
    sparse_keep_ratio: float = 1.0
    motion_threshold: float = 0.1
    scene_cut_threshold: float | None = 0.5
    seed: int = 0

    def __post_init__(self):
        _check_int("cache_interval", self.cache_interval, 1, MAX_CACHE_INTERVAL)
        _check_int("max_frames", self.max_frames, 1, MAX_BANK_FRAMES)
        if not isinstance(self.merge, bool):
            raise ConfigError(f"bank merge {self.merge!r} must be True (merged memory) or False (FIFO)")
        self.fusion_threshold = _check_float("fusion_threshold", self.fusion_threshold, 0.0, 2.0)
        self.fusion_strength = _check_float("fusion_strength", self.fusion_strength, 0.0, 1.0)
        if self.fusion_blocks is not None:
            if isinstance(self.fusion_blocks, str) or not all(isinstance(b, str) for b in self.fusion_blocks):
                raise ConfigError(f"bank fusion_blocks {self.fusion_blocks!r} must be a list of UNet block names "
                                  f"such as ['mid_block', 'up_blocks.1']")
            self.fusion_blocks = tuple(self.fusion_blocks)
        self.sparse_keep_ratio = _check_float("sparse_keep_ratio", self.sparse_keep_ratio, 0.0, 1.0, low_open=True)
        self.motion_threshold = _check_float("motion_threshold", self.motion_threshold, 0.0, 10.0)
        if self.scene_cut_threshold is not None:
            self.scene_cut_threshold = _check_float("scene_cut_threshold", self.scene_cut_threshold, 0.0, 2.0,
                                                    low_open=True)
        _check_int("seed", self.seed, 0, checks.MAX_SEED)

    @property
    def sparse(self) -> bool:
        return self.sparse_keep_ratio < 1.0

    @classmethod
    def from_setting(cls, value) -> "BankConfig | bool":
        """The `bank=` setting of a video pipeline: None/True → defaults, False → off, dict → options."""
        if value is None or value is True:
            return cls()
        if value is False or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return checks.from_options("bank", cls, value)
        raise ConfigError(f"bank {value!r} must be None (method defaults), False (off), True, a dict of options "
                          f"or a BankConfig")
