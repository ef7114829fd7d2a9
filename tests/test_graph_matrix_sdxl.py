"""The graph matrix (`graph_matrix.py`), part 3: SDXL with the IP-Adapter, ControlNets and the bank."""
from __future__ import annotations

import pytest

from graph_matrix import SDXL, check_variant


@pytest.mark.parametrize("variant", SDXL)
def test_traces_as_one_graph_and_exports_with_native_tensorrt_ops(variant, tmp_path):
    check_variant(variant, tmp_path)
