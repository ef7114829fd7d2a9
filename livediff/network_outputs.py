"""What a network call returns: its outputs by name (`TensorFunction.output_names`), on every backend."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from livediff.errors import AcceleratorError

if TYPE_CHECKING:
    from livediff.networks import TensorFunction


class NetworkOutputs:
    """A network call's outputs by name (`TensorFunction.output_names`), whatever the backend.

    Every runner returns this, however many outputs its graph has: a graph with one output and a
    graph with forty are read the same way (`outputs["noise_pred"]`). Positional unpacking is refused
    on purpose: `noise_pred, *new = outputs` over a bare tensor silently unpacks its rows instead.
    """

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, torch.Tensor]):
        self._values = dict(values)

    @classmethod
    def of(cls, function: "TensorFunction", outputs) -> "NetworkOutputs":
        """Name what a function or a graph returned (a tensor, or a sequence in `output_names` order)."""
        if isinstance(outputs, NetworkOutputs):
            return outputs
        values = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
        names = function.output_names
        if len(values) != len(names):
            raise AcceleratorError(f"{function.name} returned {len(values)} outputs; its outputs are "
                                   f"{len(names)}: {', '.join(names)}")
        return cls(dict(zip(names, values)))

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._values[name]
        except KeyError:
            raise KeyError(f"no output {name!r}; outputs: {', '.join(self._values)}") from None

    def __iter__(self) -> Iterator:
        raise TypeError("network outputs are read by name (outputs['noise_pred']), not unpacked by position")

    def values(self) -> tuple[torch.Tensor, ...]:
        return tuple(self._values.values())

    def items(self):
        return self._values.items()

    def select(self, names: Sequence[str]) -> list[torch.Tensor]:
        return [self[name] for name in names]

    def map(self, fn) -> "NetworkOutputs":
        """The same names, each tensor replaced by `fn(tensor)`."""
        return NetworkOutputs({name: fn(t) for name, t in self._values.items()})

    def __repr__(self) -> str:
        return f"NetworkOutputs({', '.join(f'{n}: {tuple(t.shape)}' for n, t in self._values.items())})"
