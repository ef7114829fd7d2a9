"""The parity matrix's other video cases (see test_parity_matrix_video.py)."""
from __future__ import annotations

import pytest

from parity_matrix import BACKENDS, check_case
from test_parity_matrix_video import HERE, VIDEO_CASES

pytest.importorskip("openvino")


@pytest.mark.parametrize("case", [case for i, case in enumerate(VIDEO_CASES) if i not in HERE],
                         ids=lambda case: case.name)
def test_every_backend_gives_eagers_frames(case, shared_graph_cache):
    check_case(case, shared_graph_cache)


@pytest.mark.parametrize("accelerator", BACKENDS)
def test_graph_runners_read_nothing_back_beyond_their_execution_provider(accelerator, monkeypatch, shared_graph_cache):
    """test_sync_audit's budget (0 host reads per steady frame) on the graph runners, for a case whose
    graphs this file has just exported (tests run in file order)."""
    from collections import Counter

    from test_sync_audit import audit_graph_runner

    seen = audit_graph_runner("video, initialize, bank sparse", accelerator, monkeypatch, shared_graph_cache)
    assert seen == Counter()
