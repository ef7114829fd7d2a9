"""A picture file declaring a huge size is refused from its header, before it is decoded: in the
Python API (`read_picture`, a pipeline's frames, style images) and the CLI (the UI: test_ui_server.py)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from livediff.app import cli
from livediff.app.commands import images
from livediff.app.pictures import picture_size, read_picture
from livediff.errors import InputError
from livediff.pipelines.frames import host_frames
from livediff.pipelines.ip_adapter import clip_pixels

REFUSED = r"8000x8000 \(64\.0 MP\), above the limit of 40 MP"


def huge_png(folder: Path) -> Path:
    """8000x8000 pixels (64 MP) in a file of a few KB: a 1-bit PNG of one colour."""
    path = folder / "huge.png"
    Image.new("1", (8000, 8000)).save(path)
    assert path.stat().st_size < 20_000
    return path


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.fixture
def decodes(monkeypatch) -> list[tuple[int, int]]:
    """The sizes of the pictures PIL decodes (`Image.load`), in order."""
    seen: list[tuple[int, int]] = []
    load = Image.Image.load

    def counted(self):
        if self._im is None:
            seen.append(self.size)
        return load(self)

    monkeypatch.setattr(Image.Image, "load", counted)
    return seen


def test_read_picture_refuses_a_huge_picture_from_its_header(tmp_path, decodes):
    huge = huge_png(tmp_path)
    before = rss_bytes()
    with pytest.raises(InputError, match=f"image '{huge}' is {REFUSED}; make it smaller or pass a larger max_pixels"):
        read_picture(huge)
    with pytest.raises(InputError, match=REFUSED):
        picture_size(huge)
    assert decodes == [] and rss_bytes() - before < 32 << 20
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    with pytest.raises(InputError, match=r"40x30 \(0\.0 MP\), above the limit of 0\.001 MP"):
        read_picture(small, max_pixels=1000)
    assert read_picture(small).size == (40, 30)


def test_the_api_refuses_a_huge_opened_picture_before_decoding_it(tmp_path, decodes):
    with Image.open(huge_png(tmp_path)) as huge:
        with pytest.raises(InputError, match="the image is 8000x8000 .* the pipeline runs at 128x128"):
            host_frames(huge, 128, 128, 1)  # what `pipe(picture)` does first
        with pytest.raises(InputError, match=f"the style image is {REFUSED}; make it smaller or pass it as an array"):
            clip_pixels(huge, 224)
    assert decodes == []


def test_the_cli_refuses_a_huge_picture_before_loading_a_model(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the picture was checked")

    monkeypatch.setattr(images, "build_pipeline", no_model)
    huge = huge_png(tmp_path)
    before = rss_bytes()
    assert cli.main(["img2img", str(huge), "-o", str(tmp_path / "out.png"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"image '{huge}' is 8000x8000 (64.0 MP), above the limit of 40 MP; make it smaller or raise the limit " \
           f"with --max-pixels" in err
    assert rss_bytes() - before < 32 << 20
    with pytest.raises(SystemExit):
        cli.main(["img2img", str(huge), "-o", str(tmp_path / "out.png"), "--max-pixels", "0"])
    assert "--max-pixels: 0 is outside 1..178956970" in capsys.readouterr().err
