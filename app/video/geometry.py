"""Frame geometry: how input frames become processor frames and processor frames output frames.

A processor may declare a working size (``width``/``height`` attributes; diffusion models need
fixed multiples of 8). With ``resize="crop"`` (default) the job takes the largest centred region of
the input with the model's aspect ratio, scales it to the working size, and scales the result back
to that region's size in input pixels — nothing is ever distorted; if the model's aspect differs
from the input's by more than 2 %, the output is the cropped region (e.g. a 320x240 input with a
256x256 model gives 240x240). Within 2 % (the usual case when the working size is chosen from the
input's aspect, see :func:`suggest_working_size`) the output keeps the input size. With
``resize="stretch"`` the whole frame is squeezed to the working size and stretched back: output
size = input size, but the model sees a distorted picture. A processor without a working size gets
frames at input size. Output sizes are rounded down to even numbers (``yuv420p``), so an odd input
loses its last row/column.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from livediff.errors import ConfigError

ResizeMode = Literal["crop", "stretch"]


def working_size(processor: Any) -> tuple[int, int] | None:
    """The processor's declared (width, height), or None if it takes any size."""
    w, h = getattr(processor, "width", None), getattr(processor, "height", None)
    if isinstance(w, (int, np.integer)) and isinstance(h, (int, np.integer)) and w > 0 and h > 0:
        return int(w), int(h)
    return None


def size_multiple(mode: str) -> int:
    """What a model size's sides must be multiples of: 8 (the VAE's downscale) for the image models, 16 in
    mode causal-video (the Wan VAE's 8x and the transformer's 2x2 patches)."""
    return 16 if mode == "causal-video" else 8


def suggest_working_size(width: int, height: int, longest: int = 512, multiple: int = 8,
                         shortest: int = 64) -> tuple[int, int]:
    """A model size with the input's aspect ratio: longest side ``longest``, both sides multiples of
    ``multiple`` and at least ``shortest`` (e.g. 1920x1080 → 512x288). Using it keeps
    ``resize="crop"`` output at input size (a very elongated input is cropped to ``shortest``)."""
    scale = longest / max(width, height)
    w = max(shortest, round(width * scale / multiple) * multiple)
    h = max(shortest, round(height * scale / multiple) * multiple)
    return w, h


def complete_size(width: int | None, height: int | None, input_width: int, input_height: int,
                  multiple: int = 8) -> tuple[int, int]:
    """The model size from what the user gave: both sides as given; one side and the other from the
    input's aspect, rounded to `multiple` (at least `multiple`); neither, `suggest_working_size`."""
    if width and height:
        return width, height
    if width:
        return width, max(multiple, round(width * input_height / input_width / multiple) * multiple)
    if height:
        return max(multiple, round(height * input_width / input_height / multiple) * multiple), height
    return suggest_working_size(input_width, input_height, multiple=multiple)


def even(pixels: int) -> int:
    return max(2, pixels - pixels % 2)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    w, h = size
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    shrink = w * h < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class FrameGeometry:
    """How input frames become processor frames and processor frames become output frames."""

    input_size: tuple[int, int]
    work_size: tuple[int, int] | None
    output_size: tuple[int, int]
    #: (x, y, w, h): the input region the processor sees
    region: tuple[int, int, int, int]

    def to_processor(self, rgb: np.ndarray) -> np.ndarray:
        if self.work_size is None:
            return rgb
        x, y, w, h = self.region
        if (w, h) != self.input_size:
            rgb = rgb[y : y + h, x : x + w]
        return np.ascontiguousarray(resize_rgb(rgb, self.work_size))

    def to_output(self, rgb: np.ndarray) -> np.ndarray:
        ow, oh = self.output_size
        if rgb.shape[0] == oh and rgb.shape[1] == ow:
            return rgb
        if self.work_size is None and rgb.shape[:2] == self.input_size[::-1]:
            return np.ascontiguousarray(rgb[:oh, :ow])  # odd input: drop the last row/column, no resampling
        return np.ascontiguousarray(resize_rgb(rgb, (ow, oh)))


def plan_geometry(
    input_size: tuple[int, int],
    work_size: tuple[int, int] | None,
    resize: ResizeMode = "crop",
    tolerance: float = 0.02,
) -> FrameGeometry:
    """Decide region, processor size and output size (see the module docstring for the rules)."""
    if resize not in ("crop", "stretch"):
        raise ConfigError(f"resize mode {resize!r} is not one of crop, stretch")
    iw, ih = input_size
    full = (0, 0, iw, ih)
    even_input = (even(iw), even(ih))
    if work_size is None or resize == "stretch":
        return FrameGeometry(input_size, work_size, even_input, full)
    ww, wh = work_size
    aspect = Fraction(ww, wh)
    if Fraction(iw, ih) > aspect:
        ch, cw = ih, min(iw, max(1, round(ih * aspect)))
    else:
        cw, ch = iw, min(ih, max(1, round(iw / aspect)))
    region = ((iw - cw) // 2, (ih - ch) // 2, cw, ch)
    if cw >= iw * (1 - tolerance) and ch >= ih * (1 - tolerance):
        output = even_input
    else:
        output = (even(cw), even(ch))
    return FrameGeometry(input_size, work_size, output, region)
