"""What reaches a device, counted without one: the `meta` device stands in for the GPU.

`DeviceTraffic` is a dispatch mode that sees every operator. It records each copy from the host (CPU)
onto the device with its dtype and size, and the bytes live on the device (each result's storage is
counted until it is freed), so a load's peak device memory and a frame's host→device copies are
numbers on a CPU-only machine. Used by the load and causal-video tests and `benchmarks/load_memory.py`.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

COPY_OPS = {"_to_copy", "copy_"}


@dataclass(frozen=True)
class HostCopy:
    dtype: torch.dtype
    nbytes: int


class DeviceTraffic(TorchDispatchMode):
    """Counts host→`device` copies and the bytes live on `device` (current and peak)."""

    def __init__(self, device: str = "meta"):
        super().__init__()
        self.device = torch.device(device)
        self.copies: list[HostCopy] = []
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        source = args[1] if name == "copy_" else args[0]
        if (name in COPY_OPS and isinstance(out, torch.Tensor) and out.device.type == self.device.type
                and isinstance(source, torch.Tensor) and source.device.type == "cpu"):
            self.copies.append(HostCopy(out.dtype, out.numel() * out.element_size()))
        for result in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(result, torch.Tensor) and result.device.type == self.device.type:
                self._track(result.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._seen:
            return
        nbytes = storage.nbytes()
        self._seen.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes
