"""Similarity filter: skip frames that barely changed, to save GPU work on static scenes."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from livediff.errors import ConfigError
from livediff.pipelines import checks


def skip_probability(similarity: float, threshold: float) -> float:
    """max(0, 1 − (1−c)/(1−threshold)): 0 at the threshold, 1 for an identical frame."""
    return max(0.0, 1.0 - (1.0 - similarity) / (1.0 - threshold))


@dataclass
class SimilarityFilterConfig:
    threshold: float = 0.98
    max_skip: int = 10

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"similarity threshold {self.threshold!r} must be a number in (0, 1)")
        if not isinstance(self.max_skip, int) or isinstance(self.max_skip, bool) or self.max_skip < 0:
            raise ConfigError(f"similarity max_skip {self.max_skip!r} must be an integer >= 0")

    @classmethod
    def from_setting(cls, setting) -> "SimilarityFilterConfig | None":
        """None (off), a config, or a dict of its fields, e.g. {"threshold": 0.98, "max_skip": 10}."""
        if setting is None or isinstance(setting, cls):
            return setting
        if isinstance(setting, dict):
            return checks.from_options("similarity filter", cls, setting)
        raise ConfigError(f"similarity_filter {setting!r} must be None or a dict such as "
                          f"{{'threshold': 0.98, 'max_skip': 10}}")


class SimilarityFilter:
    """Decides per frame whether to reuse the previous output.

    Compares with the last *processed* input (cosine similarity), skips with `skip_probability`,
    and never skips more than `max_skip` frames in a row, so a static scene still refreshes.
    """

    def __init__(self, config: SimilarityFilterConfig, seed: int = 0):
        self.config = config
        self._rng = random.Random(seed)
        self._reference: torch.Tensor | None = None
        self.consecutive_skips = 0

    def reset(self) -> None:
        self._reference = None
        self.consecutive_skips = 0

    def state(self) -> dict:
        """Its position as plain data (`pipelines.stream_state`)."""
        return {"rng": self._rng.getstate(), "consecutive_skips": self.consecutive_skips,
                "reference": None if self._reference is None else self._reference.clone()}

    def load_state(self, state: dict) -> None:
        self._rng.setstate(state["rng"])
        self.consecutive_skips = state["consecutive_skips"]
        self._reference = state["reference"]

    def should_skip(self, frame: torch.Tensor) -> bool:
        flat = frame.detach().flatten().float()
        if self._reference is None or self._reference.shape != flat.shape:
            return self._keep(flat)
        similarity = float(torch.nn.functional.cosine_similarity(flat, self._reference, dim=0))
        if self.consecutive_skips >= self.config.max_skip:
            return self._keep(flat)
        if self._rng.random() < skip_probability(similarity, self.config.threshold):
            self.consecutive_skips += 1
            return True
        return self._keep(flat)

    def _keep(self, flat: torch.Tensor) -> bool:
        self._reference = flat
        self.consecutive_skips = 0
        return False
