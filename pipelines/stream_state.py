"""A stream's mutable state as plain data, so a stopped stream continues exactly where it was.

`StreamPipeline.stream_state()` gives a dict of tensors and Python values (ints, floats, strings,
lists, tuples, None): what `torch.save` writes and `torch.load(weights_only=True)` reads back, no
pickled objects. `load_stream_state(state)` puts it into a pipeline built with the same settings;
the frames it makes next are the ones the original would have made.

Why store the state rather than rebuild it by replaying recent frames: the merged feature bank
and the counter that picks the banked frames depend on every frame since the stream started, so
only a replay of the whole history would rebuild them, and that costs as much as the run itself.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image

from livediff.errors import ConfigError
from livediff.pipelines.frames import FrameKind

#: bumped when the layout of a state changes: an older state is refused, not misread
STATE_VERSION = 1


def generator_state(generator: torch.Generator | None) -> torch.Tensor | None:
    """The generator's position (a CPU byte tensor); None for the meta device's absent generator."""
    return None if generator is None else generator.get_state()


def set_generator_state(generator: torch.Generator | None, state: torch.Tensor | None) -> None:
    if generator is not None and state is not None:
        generator.set_state(state.cpu())  # `torch.load(map_location=...)` may have moved it


def copy_into(target: torch.Tensor, saved: torch.Tensor, what: str) -> None:
    """Copy in place, so tensors that graphs or views point at keep their addresses."""
    if target.shape != saved.shape:
        raise ConfigError(f"stream state {what} has shape {tuple(saved.shape)}, this pipeline's is "
                          f"{tuple(target.shape)}; load a state saved by a pipeline with the same settings")
    target.copy_(saved)


def to_device(saved: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """A saved tensor on `device` (in `dtype`); anything else (None, a cache marker) as it is."""
    if not isinstance(saved, torch.Tensor):
        return saved
    return saved.to(device=device, dtype=dtype if dtype is not None else saved.dtype)


def cloned(entry: Any) -> Any:
    """A tensor copied (a state must not share memory with the live stream); anything else as it is."""
    return entry.clone() if isinstance(entry, torch.Tensor) else entry


def output_state(output: Any, kind: FrameKind | None) -> dict[str, Any] | None:
    """The last output (what the similarity filter hands out again for a skipped frame) as pixels
    plus the kind it was returned in."""
    if output is None or kind is None:
        return None
    if kind.kind == "torch":
        pixels = output.detach().clone()
    else:
        items = output if kind.batched else [output]
        pixels = torch.from_numpy(np.stack([np.asarray(item) for item in items]))
    return {"kind": kind.kind, "batched": kind.batched, "unbatched_tensor": kind.unbatched_tensor, "pixels": pixels}


def output_from_state(state: Mapping[str, Any] | None, device: torch.device) -> tuple[Any, FrameKind | None]:
    if state is None:
        return None, None
    kind = FrameKind(state["kind"], batched=state["batched"], unbatched_tensor=state["unbatched_tensor"])
    pixels: torch.Tensor = state["pixels"]
    if kind.kind == "torch":
        return pixels.to(device), kind
    arrays = list(pixels.cpu().numpy())
    items = [Image.fromarray(a) for a in arrays] if kind.kind == "pil" else arrays
    return (items if kind.batched else items[0]), kind


def check_state(state: Mapping[str, Any], key: Mapping[str, Any]) -> None:
    """Refuse a state of another version or saved under other settings, naming what differs."""
    if not isinstance(state, Mapping) or state.get("version") != STATE_VERSION:
        found = state.get("version") if isinstance(state, Mapping) else type(state).__name__
        raise ConfigError(f"stream state version {found!r} is not {STATE_VERSION}; it was saved by another "
                          f"livediff version")
    saved = state.get("key", {})
    changed = [f"{name}: {saved.get(name)!r} → {value!r}" for name, value in key.items() if saved.get(name) != value]
    if changed:
        raise ConfigError(f"the stream state was saved under other settings ({'; '.join(changed)}); load it into "
                          f"a pipeline built and set up the same way")
