"""Feature fusion: pull an attention output token towards its nearest banked output.

In the low-resolution decoder layers, tokens of regions that did not change between frames find
an almost identical banked output; blending them with it removes the frame-to-frame jitter that
independent denoising leaves there, while tokens of changed regions (no close match) stay as computed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from livediff.pipelines.bank.merge import take


def fuse_features(out: torch.Tensor, banked: torch.Tensor, bias: torch.Tensor, threshold: float,
                  strength: float) -> torch.Tensor:
    """Blend each token of `out` (B, N, C) with its cosine nearest neighbour in `banked` (B, L, C).

    `bias` (B, L) is the bank's log-mass: -inf marks an empty slot, which never matches. A token
    whose best similarity is above `threshold` becomes (1 − strength)·own + strength·neighbour;
    every other token is returned unchanged (bit for bit, so a threshold above 1 is exact).
    """
    similarity = F.normalize(out, dim=-1) @ F.normalize(banked, dim=-1).transpose(1, 2)
    similarity = similarity.masked_fill(~torch.isfinite(bias).unsqueeze(1), float("-inf"))
    best, nearest = similarity.max(dim=-1)
    blended = torch.lerp(out, take(banked, nearest), strength)
    return torch.where((best > threshold).unsqueeze(-1), blended, out)
