"""A loaded network onto its device and dtype, each weight cast on its way there.

Networks load in float32 (from disk or a random preset). `net.to(device)` then `net.to(dtype)` lands
the whole float32 network on the device before casting it, so the device peaks at the float32 size:
10.3 GB for SDXL's UNet, which then runs in 5.1 GB of float16 — a 12–16 GB card fails to load it.
`place_network` casts each tensor on the host as it moves (`Tensor.to(device, dtype)` converts on the
source side in a blocking copy), so the device never holds more than the cast network.

Modules a model class keeps in float32 (`_keep_in_fp32_modules`, as diffusers' and transformers'
`from_pretrained(torch_dtype=...)` honour: Wan's rotary table, time embedder, `scale_shift_table`
and norms; T5's `wo`) stay float32 under a half-precision dtype; above float32 (float64 reference
checks) everything follows the dtype.
"""
from __future__ import annotations

from itertools import chain
from typing import TypeVar

import torch
from torch import nn

Network = TypeVar("Network", bound=nn.Module)


def kept_in_float32(net: nn.Module) -> tuple[str, ...]:
    """The module names `net`'s class keeps in float32 (matched against each dotted name's parts)."""
    return tuple(getattr(net, "_keep_in_fp32_modules", None) or ())


def tensor_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype, kept: tuple[str, ...]) -> torch.dtype:
    """The dtype `tensor` (named `name` in its network) runs in under the network's `dtype`."""
    if not tensor.is_floating_point():
        return tensor.dtype
    if dtype.itemsize < torch.float32.itemsize and any(part in kept for part in name.split(".")):
        return torch.float32
    return dtype


@torch.no_grad()
def place_network(net: Network, device: str | torch.device, dtype: torch.dtype) -> Network:
    """`net` on `device` in `dtype` (kept modules in float32), for inference: eval mode, no gradients.
    Goes through `Module._apply`, the machinery of `Module.to`, so parameters keep their identity where
    torch can swap their data in place and tensors shared between modules stay shared."""
    kept = kept_in_float32(net)
    wanted = {id(tensor): tensor_dtype(name, tensor, dtype, kept)
              for name, tensor in chain(net.named_parameters(), net.named_buffers())}
    net._apply(lambda tensor: tensor.to(device=device, dtype=wanted.get(id(tensor), tensor.dtype)))
    return net.eval().requires_grad_(False)
