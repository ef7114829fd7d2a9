"""The `invert` ControlNet preprocessor (pipelines/preprocessors/invert.py), added by the recipe of
docs/extending.md: its control image is 1 − frame, made on the device; the CLI lists it and a
pipeline runs with it."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from livediff.pipelines import control_registry, load_pipeline
from livediff.pipelines.control import ControlImages, ControlNetSpec, HostControl

SIZE = 64


def test_invert_is_registered_on_the_device():
    spec = control_registry.get("invert")
    assert spec.runs_on == "device" and spec.network is None and "invert" in control_registry.names()


def test_the_control_image_is_the_frames_negative():
    frames = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    control, = ControlImages((ControlNetSpec("random", preprocessor="invert"),))(frames, HostControl(None, (None,)))
    assert torch.allclose(control, 1 - (frames + 1) / 2)
    on_meta = control_registry.get("invert").run(frames.to("meta"), spec=None, network=None, given=None, index=0)
    assert on_meta.device.type == "meta"  # nothing is read back to the host


@pytest.mark.parametrize("command", ["webcam", "video"])
def test_the_cli_lists_it(command):
    out = subprocess.run([sys.executable, "-m", "livediff.app.cli", command, "--help"], capture_output=True,
                         text=True).stdout
    assert "invert (the frame's negative, on the device)" in " ".join(out.split())


def test_a_pipeline_runs_with_it():
    pipe = load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32", t_index_list=[32, 45],
                         controlnet=[dict(model="random", preprocessor="invert")])
    pipe.prepare(prompt="a photo")
    frame = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out = pipe(frame, output="tensor")
    assert torch.isfinite(out).all()
    assert torch.allclose(pipe.last_control[0][-1], 1 - frame, atol=1e-6)
