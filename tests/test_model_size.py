"""One given side of the model size keeps the input's aspect for the other, and says the size chosen."""
from __future__ import annotations

import argparse

import pytest
from PIL import Image

from livediff.app import cli
from livediff.app.commands import images, restyle_video
from livediff.app.video.geometry import complete_size
from media import make_clip


class Built(Exception):
    """Raised instead of loading a model, carrying the size the command chose."""


@pytest.fixture
def chosen(monkeypatch):
    def capture(args, mode, **extra):
        raise Built((args.width, args.height))

    monkeypatch.setattr(images, "build_pipeline", capture)


@pytest.mark.parametrize("given,expected", [(("--width", "256"), (256, 192)), (("--height", "96"), (128, 96)),
                                            ((), (512, 512)), (("--width", "64", "--height", "64"), (64, 64))])
def test_img2img_keeps_a_4_by_3_inputs_aspect_from_one_side(tmp_path, capsys, chosen, given, expected):
    source = tmp_path / "in.png"
    Image.new("RGB", (400, 300), "red").save(source)
    with pytest.raises(Built) as built:
        cli.main(["img2img", str(source), "-o", str(tmp_path / "out.png"), *given])
    assert built.value.args[0] == expected
    said = capsys.readouterr().out
    assert (f"model size {expected[0]}x{expected[1]}" in said) == (len(given) == 2)


def test_video_keeps_the_inputs_aspect_from_one_side(tmp_path, capsys):
    clip = make_clip(tmp_path / "clip.mp4", n_frames=2, size=(160, 120), audio=False)
    args = argparse.Namespace(inputs=[str(clip)], output=str(tmp_path / "out.mp4"), width=64, height=None,
                              mode="video")
    restyle_video._working_size(args)
    assert (args.width, args.height) == (64, 48)
    assert "model size 64x48" in capsys.readouterr().out


def test_the_other_side_is_rounded_to_the_models_multiple():
    assert complete_size(100, None, 1920, 1080, multiple=8) == (100, 56)
    assert complete_size(None, 64, 1080, 1920, multiple=16) == (32, 64)
    assert complete_size(64, None, 10000, 10, multiple=8) == (64, 8)
