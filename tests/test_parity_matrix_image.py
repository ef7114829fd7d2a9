"""The parity matrix's image-mode and causal-video cases (`parity_matrix`: cases, coverage argument);
its video cases are in test_parity_matrix_video.py, so the two test workers share the work."""
from __future__ import annotations

import pytest

from parity_matrix import BACKENDS, CASES, FACTORS, GROUPS, Case, check_case, required_pairs, uncovered_pairs

pytest.importorskip("openvino")

IMAGE_CASES = [case for case in CASES if case.mode != "video"]


@pytest.mark.parametrize("case", IMAGE_CASES, ids=lambda case: case.name)
def test_every_backend_gives_eagers_frames(case, shared_graph_cache):
    check_case(case, shared_graph_cache)


def test_the_cases_cover_every_pair_of_options_that_share_code():
    assert uncovered_pairs() == set()
    assert set().union(*GROUPS.values()) <= set(FACTORS) | {"banked", "controlled"}
    assert len(required_pairs()) > 150  # the pairs are really enumerated, not an empty set


def test_the_coverage_check_sees_a_missing_pair():
    """Without its one sparse-bank case with initialize CFG, the matrix misses pairs; refused
    combinations are never required."""
    sparse = Case(mode="video", cfg="initialize", bank="sparse")
    assert sparse in CASES
    assert uncovered_pairs([case for case in CASES if case != sparse]) != set()
    assert ("bank", "sparse", "token_merge", True) not in required_pairs()  # refused by the config


@pytest.mark.parametrize("accelerator", BACKENDS)
def test_graph_runners_read_nothing_back_beyond_their_execution_provider(accelerator, monkeypatch, shared_graph_cache):
    """test_sync_audit's budget (0 host reads per steady frame) on the graph runners, for a case whose
    graphs this file has just exported (tests run in file order)."""
    from collections import Counter

    from test_sync_audit import audit_graph_runner

    assert audit_graph_runner("txt2img, none", accelerator, monkeypatch, shared_graph_cache) == Counter()
