"""Conversions between what users pass (PIL images, uint8 arrays, tensors) and model tensors.

The pipeline works on (B, 3, H, W) tensors in [-1, 1]; it gives back the same kind of object it
was given, so a caller never has to convert. Sizes must match the pipeline exactly: resizing is
the caller's choice (the app resizes and crops; a library should not guess).

A frame goes in in two parts. `host_frames` checks it and stacks its pixels on the host, as they
came (uint8 for images and arrays): work for the caller's thread, before the networks' lock is
taken. `HostFrames.to_model` uploads them as they are (uint8 is a quarter of float32's bytes) and
converts them to the model's dtype on the device.

Accepted: PIL images, HxWx3 uint8 RGB arrays, float tensors (3,H,W) or (B,3,H,W) with values in
[0, 1]. A CPU tensor with non-finite values or values outside [0, 1] (e.g. 0..255) is an
`InputError`; a tensor already on a GPU is not read back to check (that would stall the stream):
its values are clamped to [0, 1], and a non-finite frame is contained by the stream itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from livediff.errors import InputError

Kind = Literal["pil", "numpy", "torch"]


@dataclass(frozen=True)
class FrameKind:
    kind: Kind
    batched: bool
    unbatched_tensor: bool = False  # a single (3,H,W) tensor comes back as (3,H,W)


def _check_size(h: int, w: int, height: int, width: int, what: str) -> None:
    if (h, w) != (height, width):
        raise InputError(f"{what} is {w}x{h} (WxH) but the pipeline runs at {width}x{height}; "
                         f"resize it first or build the pipeline with width={w}, height={h}")


def _array_pixels(array: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(3,H,W) uint8 on the host."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"an image array must be HxWx3 uint8 (RGB); got shape {tuple(array.shape)} "
                         f"dtype {array.dtype}")
    _check_size(array.shape[0], array.shape[1], height, width, "the image")
    return torch.tensor(array).permute(2, 0, 1)


def _pil_pixels(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """(3,H,W) uint8 on the host; the size is checked before `convert`, which decodes a picture opened from a file."""
    _check_size(image.height, image.width, height, width, "the image")
    return _array_pixels(np.asarray(image.convert("RGB")), height, width)


def _checked_tensor(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1,3,H,W) float, as given (converted on the device by `HostFrames.to_model`)."""
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 4 or tensor.shape[1] != 3 or not tensor.is_floating_point():
        raise InputError(f"an image tensor must be float (3,H,W) or (B,3,H,W) in [0,1]; got shape "
                         f"{tuple(tensor.shape)} dtype {tensor.dtype}")
    _check_size(tensor.shape[2], tensor.shape[3], height, width, "the image tensor")
    if tensor.device.type == "cpu":
        if not bool(torch.isfinite(tensor).all()):
            raise InputError("the image tensor has NaN or infinite values; pass finite values in [0, 1]")
        low, high = float(tensor.min()), float(tensor.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise InputError(f"the image tensor has values from {low:g} to {high:g}; float tensors must be in "
                             f"[0, 1] (divide 0..255 pixel values by 255)")
    return tensor


def _kind_name(item: Any) -> str:
    for kind, name in ((Image.Image, "PIL images"), (np.ndarray, "arrays"), (torch.Tensor, "tensors")):
        if isinstance(item, kind):
            return name
    return type(item).__name__


@dataclass(frozen=True)
class HostFrames:
    """A call's frames, checked and stacked by the caller's thread: `pixels` is (F,3,H,W) uint8
    0..255 on the host (PIL images, arrays) or float in [0,1] as given (tensors, on any device)."""

    pixels: torch.Tensor
    kind: FrameKind

    def host_uint8(self) -> torch.Tensor:
        """(F,3,H,W) uint8 on the host, what host preprocessors read: the pixels themselves for images
        and arrays; a float tensor rounded (one read back if it is on a device: the caller put it there)."""
        if self.pixels.dtype == torch.uint8:
            return self.pixels
        return (self.pixels.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)

    def to_model(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(F,3,H,W) in [-1,1] in `dtype` on `device`: uploaded as they are, converted there."""
        return pixels_to_model(upload(self.pixels, device), dtype)


def upload(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`; a host tensor bound for CUDA goes through pinned memory without blocking
    the host (the caching host allocator keeps the pinned copy alive until the transfer is done)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def pixels_to_model(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 0..255 or float [0,1] pixels → [-1,1] in `dtype`, where the pixels are; computed in
    float32 whatever `dtype` is, so every device gives what the host conversion gave."""
    if pixels.dtype == torch.uint8:
        return (pixels.float() / 127.5 - 1).to(dtype)
    return (pixels.float().clamp(0, 1) * 2 - 1).to(dtype)


def host_frames(frames: Any, height: int, width: int, count: int) -> HostFrames:
    """Check `count` frames (one frame when count is 1, else a list or a batch) and stack their pixels:
    (count,3,H,W) without converting them (`HostFrames`)."""
    batched = isinstance(frames, (list, tuple)) or (isinstance(frames, np.ndarray) and frames.ndim == 4) or (
        isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[0] != 1)
    items = list(frames) if batched else [frames]
    if len(items) != count:
        raise InputError(f"got {len(items)} frame(s) but frame_buffer_size is {count}; pass exactly {count}")
    first = items[0]
    kinds = {_kind_name(item) for item in items}
    if len(kinds) > 1:
        raise InputError(f"the frames mix {', '.join(sorted(kinds))}; pass frames of one kind (PIL images, uint8 "
                         f"arrays or float tensors)")
    if isinstance(first, Image.Image):
        kind: Kind = "pil"
        pixels = [_pil_pixels(i, height, width) for i in items]
    elif isinstance(first, np.ndarray):
        kind = "numpy"
        pixels = [_array_pixels(i, height, width) for i in items]
    elif isinstance(first, torch.Tensor):
        return HostFrames(torch.cat([_checked_tensor(i, height, width) for i in items]),
                          FrameKind("torch", batched, unbatched_tensor=not batched and first.ndim == 3))
    else:
        raise InputError(f"unsupported frame type {type(first).__name__}; pass a PIL image, an HxWx3 uint8 "
                         f"array or a float tensor")
    return HostFrames(torch.stack(pixels), FrameKind(kind, batched))


def from_model_tensor(images: torch.Tensor, kind: FrameKind):
    """(B,3,H,W) in [-1,1] → the kind the caller passed in."""
    if images.dtype != torch.float64:  # float64 pipelines (reference checks) keep their precision
        images = images.float()
    images = (images / 2 + 0.5).clamp(0, 1)
    if kind.kind == "torch":
        return images[0] if kind.unbatched_tensor else images
    arrays = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    items = [Image.fromarray(a) for a in arrays] if kind.kind == "pil" else list(arrays)
    return items if kind.batched else items[0]
