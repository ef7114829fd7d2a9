"""Fitting browser frames and images to the model's fixed size.

Diffusion models here run at one size (multiples of 8); camera frames and uploads come in any
size. The largest centred region with the model's aspect ratio is cut out and scaled to the model
size, so nothing is distorted; what falls outside that region is not restyled.
"""
from __future__ import annotations

import cv2
import numpy as np

from livediff.errors import InputError


def fit_frame(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop `rgb` (HxWx3 or HxWx4 uint8) to the aspect of width x height and resize to it."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise InputError(f"expected an HxWx3 RGB image, got {getattr(rgb, 'shape', type(rgb).__name__)}")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    h, w = rgb.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(rgb)
    crop_w, crop_h = min(w, round(h * width / height)), min(h, round(w * height / width))
    x0, y0 = (w - crop_w) // 2, (h - crop_h) // 2
    region = rgb[y0:y0 + crop_h, x0:x0 + crop_w]
    shrinking = crop_w > width
    return cv2.resize(region, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
