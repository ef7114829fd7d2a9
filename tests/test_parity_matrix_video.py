"""The parity matrix's video cases (`parity_matrix`: cases, coverage argument), in two files so the two
test workers share them: split by their measured time, cases that share a graph kept in one file (the
second one exports it, the first from the shared cache); test_parity_matrix_video_2.py has the rest."""
from __future__ import annotations

import pytest

from parity_matrix import CASES, check_case

pytest.importorskip("openvino")

VIDEO_CASES = [case for case in CASES if case.mode == "video"]
HERE = (2, 3, 4)


@pytest.mark.parametrize("case", [VIDEO_CASES[i] for i in HERE], ids=lambda case: case.name)
def test_every_backend_gives_eagers_frames(case, shared_graph_cache):
    check_case(case, shared_graph_cache)
