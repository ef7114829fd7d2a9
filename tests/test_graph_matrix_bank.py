"""The graph matrix (`graph_matrix.py`), part 2: the banked UNet's layouts (bank off/dense/sparse, token merging, fusion)."""
from __future__ import annotations

import pytest

from graph_matrix import BANKED, check_variant


@pytest.mark.parametrize("variant", BANKED)
def test_traces_as_one_graph_and_exports_with_native_tensorrt_ops(variant, tmp_path):
    check_variant(variant, tmp_path)
