"""Network inputs travel by name and are put in a function's order only at the backend boundary."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from livediff import load_pipeline
from livediff.network_inputs import NamedRunner, NetworkInputs
from livediff.network_outputs import NetworkOutputs

SIZE = 64


def test_a_name_given_twice_is_refused():
    with pytest.raises(ValueError, match="'sample' is given twice"):
        NetworkInputs.join({"sample": torch.zeros(1)}, {"sample": torch.ones(1)})


def test_missing_and_unexpected_names_are_named():
    inputs = NetworkInputs({"sample": torch.zeros(2), "timestap": torch.zeros(2)})
    with pytest.raises(ValueError, match="missing timestep; unexpected timestap"):
        inputs.ordered(("sample", "timestep"))
    assert inputs.rows == 2


class Subtract(torch.nn.Module):
    input_names = ("a", "b")
    output_names = ("difference",)

    def forward(self, a, b):
        return NetworkOutputs({"difference": a - b})


def test_the_runner_puts_inputs_in_the_functions_order_whatever_the_order_given():
    runner = NamedRunner(Subtract(), Subtract())
    a, b = torch.full((1,), 5.0), torch.full((1,), 2.0)
    assert runner({"b": b, "a": a})["difference"].item() == 3.0
    assert runner({"a": a, "b": b})["difference"].item() == 3.0


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline(model="tiny", mode="img2img", t_index_list=[20, 40], width=SIZE, height=SIZE,
                         device="cpu", dtype="float32")
    pipe.prepare(prompt="oil painting")
    return pipe


def test_a_prompt_conditioning_missing_a_tensor_stops_the_call_naming_it(pipe):
    """Before names, a conditioning one tensor short shifted every later input by one position."""
    frame = torch.rand(1, 3, SIZE, SIZE)
    pipe(frame)
    first = next(iter(pipe.guidance.cond.text_kv))
    short = {name: t for name, t in pipe.guidance.cond.text_kv.items() if name != first}
    pipe.guidance.cond = replace(pipe.guidance.cond, text_kv=short)
    pipe.guidance.uncond = replace(pipe.guidance.uncond, text_kv=short)
    with pytest.raises(ValueError, match=f"missing {first}"):
        pipe(frame)


def test_a_graph_given_one_input_too_few_says_what_it_takes(pipe):
    """The functions name their positional inputs (as a graph passes them) before reading any."""
    unet = pipe.runners.unet.function
    inputs = unet.example_inputs(1, SIZE, SIZE, torch.float32, "cpu")
    with pytest.raises(ValueError, match=rf"takes {len(inputs)} inputs \(sample, timestep, .*\), got {len(inputs) - 1}"):
        unet(*inputs[:-1])
