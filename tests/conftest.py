"""Shared test set-up: GPU tests skip cleanly without CUDA; one CPU thread per test process.

One thread because the test networks are tiny and the suite shares two cores with the browser, the
Gradio server and Ray workers: OpenMP's spinning threads slow a contended machine down many times.
"""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("LIVEDIFF_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_graph_cache(tmp_path_factory):
    """One engine cache for the whole test run (both xdist workers): a graph several tests need (same
    function, weights, size) is exported once. Tests about the cache itself use their own folders."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "shared-graph-cache"
    path.mkdir(exist_ok=True)
    return path
