"""The graph matrix (`graph_matrix.py`), part 1: the plain networks; and the op check itself."""
from __future__ import annotations

import pytest

from graph_matrix import PLAIN, SIZE, check_variant
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


def test_tensorrt_refuses_an_opset_it_cannot_parse():
    from livediff.accelerators import check_accelerator
    from livediff.errors import ConfigError
    from livediff.pipelines import StreamConfig
    from livediff.pipelines.runners import build_target

    target = build_target(StreamConfig(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32"))
    with pytest.raises(ConfigError, match="opset 21 is above 20"):
        check_accelerator("tensorrt", target, {"opset": 21})
