"""Conversions between what users pass (PIL images, uint8 arrays, tensors) and model tensors.

The pipeline works on (B, 3, H, W) tensors in [-1, 1]; it gives back the same kind of object it
was given, so a caller never has to convert. Sizes must match the pipeline exactly: resizing is
the caller's choice (the app resizes and crops; a library should not guess).

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


def _array_to_tensor(array: np.ndarray, height: int, width: int) -> torch.Tensor:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"an image array must be HxWx3 uint8 (RGB); got shape {tuple(array.shape)} "
                         f"dtype {array.dtype}")
    _check_size(array.shape[0], array.shape[1], height, width, "the image")
    return torch.tensor(array).permute(2, 0, 1).float() / 127.5 - 1


def _torch_to_tensor(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
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
    return tensor.float().clamp(0, 1) * 2 - 1


def _kind_name(item: Any) -> str:
    for kind, name in ((Image.Image, "PIL images"), (np.ndarray, "arrays"), (torch.Tensor, "tensors")):
        if isinstance(item, kind):
            return name
    return type(item).__name__


def to_model_tensor(frames: Any, height: int, width: int, count: int) -> tuple[torch.Tensor, FrameKind]:
    """Convert `count` frames (one frame when count is 1, else a list or a batch) to (count,3,H,W) in [-1,1]."""
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
        tensors = [_array_to_tensor(np.asarray(i.convert("RGB")), height, width) for i in items]
    elif isinstance(first, np.ndarray):
        kind = "numpy"
        tensors = [_array_to_tensor(i, height, width) for i in items]
    elif isinstance(first, torch.Tensor):
        kind = "torch"
        return (torch.cat([_torch_to_tensor(i, height, width) for i in items]),
                FrameKind(kind, batched, unbatched_tensor=not batched and first.ndim == 3))
    else:
        raise InputError(f"unsupported frame type {type(first).__name__}; pass a PIL image, an HxWx3 uint8 "
                         f"array or a float tensor")
    return torch.stack(tensors), FrameKind(kind, batched)


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
