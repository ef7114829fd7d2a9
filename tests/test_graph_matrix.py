"""The graph matrix (`graph_matrix.py`), part 1: the plain networks; and the op and precision checks themselves."""
from __future__ import annotations

import pytest

from graph_matrix import PLAIN, SIZE, check_variant, precision_problems
from livediff.accelerators.tensorrt_ops import unsupported_ops


@pytest.mark.parametrize("variant", PLAIN)
def test_traces_as_one_graph_and_exports_with_native_tensorrt_ops(variant, tmp_path):
    check_variant(variant, tmp_path)


def test_the_op_check_sees_a_plugin_only_scatter():
    from onnx import helper

    node = helper.make_node("ScatterElements", ["d", "i", "u"], ["o"], reduction="add")
    graph = helper.make_graph([node], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert unsupported_ops(model) == ["ScatterElements(reduction=add)", "opset 21"]


def test_the_precision_check_sees_float64_and_float32_arithmetic():
    from onnx import TensorProto, helper

    cast_up = helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT)
    add = helper.make_node("Add", ["x32", "x32"], ["y32"])
    cast_double = helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE)
    graph = helper.make_graph([cast_up, add, cast_double], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2]),
                               helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y32", TensorProto.FLOAT, [2])])
    problems = precision_problems(helper.make_model(graph))
    assert problems == ["output y32 is FLOAT", f"Cast {cast_up.name} to FLOAT feeds ['Add']",
                        f"Cast {cast_double.name} to DOUBLE"]


def test_tensorrt_refuses_an_opset_it_cannot_parse():
    from livediff.accelerators import check_accelerator
    from livediff.errors import ConfigError
    from livediff.pipelines import StreamConfig
    from livediff.pipelines.runners import build_target

    target = build_target(StreamConfig(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32"))
    with pytest.raises(ConfigError, match="opset 21 is above 20"):
        check_accelerator("tensorrt", target, {"opset": 21})
