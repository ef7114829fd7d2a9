"""Importing a module loads only what it uses: video I/O and the error types need PyAV and numpy,
never torch or the model libraries (checked in a fresh interpreter)."""
from __future__ import annotations

import subprocess
import sys

import pytest

LIGHT_MODULES = ["livediff.errors", "livediff.app.video.codecs", "livediff.app.video.reader",
                 "livediff.app.video.writer", "livediff.app.video.concat", "livediff.app.video.segments",
                 "livediff.app.video.geometry", "livediff.app.video.options", "livediff.app.video.job",
                 "livediff.app.video.batch", "livediff.app.eval.metrics", "livediff.app.threads"]
HEAVY = {"torch", "diffusers", "transformers", "gradio"}


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_do_not_import_torch_or_model_libraries(module):
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                 .stdout.split())
    assert module in loaded and not loaded & HEAVY, sorted(loaded & HEAVY)
