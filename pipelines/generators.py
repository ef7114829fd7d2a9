"""Seeded random generators that live on the device the numbers are used on (a CPU draw would be a
host-to-device copy every time)."""
from __future__ import annotations

import torch


def device_generator(device, seed: int) -> torch.Generator | None:
    """A generator on `device` seeded with `seed`; None on `meta`, the data-less device of dry runs,
    where nothing is drawn (`torch.rand(..., generator=None, device="meta")` only makes shapes)."""
    device = torch.device(device)
    if device.type == "meta":
        return None
    return torch.Generator(device).manual_seed(seed)
