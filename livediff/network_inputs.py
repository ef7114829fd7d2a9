"""What a network call takes: its inputs by name, put in the function's order only at the backend.

Pipelines build a call's inputs from parts (the frame's latents, the prompt's conditioning, the
control images travelling with the frames, the feature bank's slices), each part naming its own
tensors. `NetworkInputs.join` refuses a name given twice and `NetworkInputs.ordered` refuses a
missing or unexpected name, so a part that grows or loses a tensor is an error naming it, never a
shifted tuple that a network would read as something else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import torch

if TYPE_CHECKING:
    from livediff.network_outputs import NetworkOutputs
    from livediff.networks import TensorFunction


class NetworkInputs(Mapping[str, torch.Tensor]):
    """A network call's inputs by name (`TensorFunction.input_names`); axis 0 of each is the row."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, torch.Tensor]):
        if not values:
            raise ValueError("a network call takes at least one input")
        self._values = dict(values)

    @classmethod
    def join(cls, *parts: Mapping[str, torch.Tensor]) -> "NetworkInputs":
        """The inputs of several parts together; a name in two parts is an error."""
        values: dict[str, torch.Tensor] = {}
        for part in parts:
            for name, tensor in part.items():
                if name in values:
                    raise ValueError(f"input {name!r} is given twice")
                values[name] = tensor
        return cls(values)

    def ordered(self, names: Sequence[str]) -> tuple[torch.Tensor, ...]:
        """The tensors in `names` order (a function's `input_names`): the one place positions appear."""
        missing = [name for name in names if name not in self._values]
        unexpected = [name for name in self._values if name not in set(names)]
        if missing or unexpected:
            raise ValueError("network inputs do not match the function's: "
                             + "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                            f"unexpected {', '.join(unexpected)}" if unexpected else "")
                                         if part))
        return tuple(self._values[name] for name in names)

    @property
    def rows(self) -> int:
        return next(iter(self._values.values())).shape[0]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"NetworkInputs({', '.join(f'{n}: {tuple(t.shape)}' for n, t in self._values.items())})"


@dataclass(frozen=True)
class NamedRunner:
    """A backend's runner of `function` (`run`, positional: the backend boundary) called with the
    inputs by name: they are put in the function's order here, and a missing or unexpected name is
    an error."""

    function: "TensorFunction"
    run: Callable[..., Any]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> "NetworkOutputs":
        return self.run(*NetworkInputs(inputs).ordered(self.function.input_names))
