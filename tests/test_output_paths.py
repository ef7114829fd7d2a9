"""Output-path mistakes of `img2img` / `txt2img` are one sentence, before any model loads."""
from __future__ import annotations

import pytest
from PIL import Image

from livediff.app import cli
from livediff.app.commands import images


@pytest.fixture
def no_model(monkeypatch):
    """A model load would be too late: the path must be refused before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output path was checked")

    monkeypatch.setattr(images, "build_pipeline", refuse)


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (40, 30), "red").save(path)
    return path


def run(capsys, *argv) -> str:
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("livediff: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("output,expected", [
    ("out.xyz", "has extension '.xyz'; image outputs end in one of"),
    ("noext", "has no extension"),
    ("/proc/nope/o.png", "cannot write in /proc/nope"),
])
def test_a_bad_output_image_is_named_with_the_fix(capsys, tmp_path, picture, no_model, output, expected):
    target = output if output.startswith("/") else str(tmp_path / output)
    assert expected in run(capsys, "img2img", str(picture), "-o", target)
    assert expected in run(capsys, "txt2img", "-o", target)


def test_an_existing_folder_as_one_output_asks_for_a_file_name(capsys, tmp_path, picture, no_model):
    err = run(capsys, "img2img", str(picture), "-o", str(tmp_path))
    assert f"-o {tmp_path} is a folder; give an image file name such as {tmp_path / 'result.png'}" in err


def test_a_folder_input_refuses_a_file_and_an_image_name_as_its_output(capsys, tmp_path, picture, no_model):
    occupied = tmp_path / "taken"
    occupied.write_text("mine")
    assert "is a file, not a folder" in run(capsys, "img2img", str(tmp_path), "-o", str(occupied))
    assert "looks like one image" in run(capsys, "img2img", str(tmp_path), "-o", str(tmp_path / "out.png"))
    assert occupied.read_text() == "mine"
