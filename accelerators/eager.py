"""Eager PyTorch: the reference backend every other backend is compared with."""
from __future__ import annotations

import torch

from livediff.network_outputs import NetworkOutputs
from livediff.networks import TensorFunction


class EagerRunner:
    """Calls a pure tensor function as it is, without autograd bookkeeping."""

    def __init__(self, function: TensorFunction):
        self.function = function

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> NetworkOutputs:
        return NetworkOutputs.of(self.function, self.function(*inputs))


class EagerBackend:
    name = "eager"
    static_rows = False

    def runner(self, function: TensorFunction) -> EagerRunner:
        return EagerRunner(function)

