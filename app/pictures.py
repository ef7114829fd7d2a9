"""Reading a picture file the user named (an input image, a style image): one error sentence for all."""
from __future__ import annotations

from pathlib import Path

from livediff.errors import InputError


def read_picture(path: str | Path):
    """The file as an RGB PIL image; an unreadable or missing file is an `InputError` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from exc
