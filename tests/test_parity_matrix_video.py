"""The parity matrix's video cases (`parity_matrix`: cases, coverage argument)."""
from __future__ import annotations

import pytest

from parity_matrix import CASES, check_case

pytest.importorskip("openvino")


@pytest.mark.parametrize("case", [case for case in CASES if case.mode == "video"], ids=lambda case: case.name)
def test_every_backend_gives_eagers_frames(case, shared_graph_cache):
    check_case(case, shared_graph_cache)
