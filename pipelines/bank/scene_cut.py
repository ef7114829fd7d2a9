"""A cheap scene-cut detector on the input frames.

After a cut, banked features belong to another scene: attending to them or fusing with them drags
the old scene into the new one. The detector compares small grey thumbnails of consecutive input
frames by correlation, which ignores global brightness/contrast changes (exposure, fades) and
barely moves for object or camera motion, but drops for a new scene.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

THUMBNAIL = 32
FLAT_STD = 1e-3  # a thumbnail with less spread than this (on [-1, 1]) is a flat frame


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """(F, 3, H, W) in [-1, 1] → (F, 32·32) area-averaged grey thumbnails."""
    grey = images.float().mean(dim=1, keepdim=True)
    return F.adaptive_avg_pool2d(grey, THUMBNAIL).flatten(1)


def structural_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − Pearson correlation of thumbnails, row by row ((P, N) → (P,); 0: same structure, 2:
    inverted). Two flat frames have no structure to compare and score 0; a flat frame against a
    structured one scores 1. Computed on the device with no branch on the data."""
    a, b = a - a.mean(dim=-1, keepdim=True), b - b.mean(dim=-1, keepdim=True)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    scale = a.shape[-1] ** 0.5
    flat_a, flat_b = na / scale < FLAT_STD, nb / scale < FLAT_STD
    change = 1.0 - (a * b).sum(dim=-1) / (na * nb).clamp_min(1e-12)
    return torch.where(flat_a & flat_b, 0.0, torch.where(flat_a | flat_b, 1.0, change))


class SceneCutDetector:
    """Remembers the last input thumbnail; `__call__` says (as a 0-d bool tensor on the frames'
    device) whether the new frames start a new scene."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._previous: torch.Tensor | None = None

    def reset(self) -> None:
        self._previous = None

    def state(self) -> torch.Tensor | None:
        """The last input thumbnail (what the next frames are compared with)."""
        return None if self._previous is None else self._previous.clone()

    def load_state(self, previous: torch.Tensor | None) -> None:
        self._previous = previous

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """True when any consecutive pair (previous call's last frame, then within the batch) changes
        more than the threshold."""
        current = thumbnails(images)
        sequence = current if self._previous is None else torch.cat([self._previous, current])
        self._previous = current[-1:]
        return (structural_change(sequence[:-1], sequence[1:]) > self.threshold).any()
