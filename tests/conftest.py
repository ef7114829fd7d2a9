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
