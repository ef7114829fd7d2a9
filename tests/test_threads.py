"""`--threads`: validated, `auto` takes the idle cores, and every computing command applies it."""
from __future__ import annotations

import argparse

import pytest

from livediff.app import threads
from livediff.app.cli import build_parser, main


@pytest.mark.parametrize("cores,load,expected", [(2, 0.0, 2), (2, 0.9, 1), (2, 3.5, 1), (8, 2.2, 6), (1, 0.0, 1)])
def test_auto_takes_the_cores_idle_at_start(cores, load, expected):
    assert threads.idle_cores(cores, load) == expected


def test_a_thread_count_outside_the_cores_is_refused_with_the_range(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.parse_threads("auto") == "auto" and threads.parse_threads("2") == 2
    for bad, message in (("0", "outside 1..2"), ("3", "outside 1..2"), ("many", "'auto' or a whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            threads.parse_threads(bad)


@pytest.mark.parametrize("command", [["ui"], ["webcam"], ["video", "in.mp4", "-o", "o.mp4"], ["img2img", "i.png", "-o", "o.png"],
                                     ["txt2img", "-o", "o.png"], ["eval", "a.mp4", "b.mp4"],
                                     ["build-engines", "--accelerator", "onnxruntime"]])
def test_every_computing_command_takes_threads(command):
    args = build_parser().parse_args([*command, "--threads", "1"])
    assert args.threads == 1


def test_main_applies_the_thread_count_before_running(monkeypatch, tmp_path):
    import torch

    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    main(["eval", str(tmp_path / "missing.mp4"), str(tmp_path / "missing2.mp4"), "--threads", "1"])
    assert seen == [1]


def test_threads_reach_a_torch_imported_afterwards_without_importing_it_first():
    import subprocess
    import sys

    code = ("import sys\nfrom livediff.app.threads import apply_threads\napply_threads(1)\n"
            "before = 'torch' in sys.modules\nimport torch\nprint(before, torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "1"], done.stdout + done.stderr
