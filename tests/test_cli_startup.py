"""`livediff --help` and argument errors answer at once: they must not import torch or diffusers."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "gradio", "av")


def modules_loaded_by(argv: list[str]) -> set[str]:
    code = ("import sys\nfrom livediff.app.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return set(result.stderr.strip().splitlines()[-1].split())


@pytest.mark.parametrize("argv", [["--help"], ["video", "--help"], ["ui", "--help"], ["webcam", "--help"],
                                  ["video"], ["img2img", "x.png", "--width", "wide"]])
def test_help_and_argument_errors_load_nothing_heavy(argv):
    loaded = modules_loaded_by(argv)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
