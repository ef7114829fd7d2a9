"""Reading a picture file the user named (an input image, a style image): one error sentence for all.

A picture's size is read from its header and checked against a pixel limit before it is decoded
(`pipelines.pixel_limit.DEFAULT_MAX_PIXELS`), so a tiny file declaring a huge picture costs nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from PIL import Image

from livediff.errors import InputError
from livediff.pipelines.pixel_limit import DEFAULT_MAX_PIXELS, check_pixel_count

#: PIL refuses to open pictures above twice its `Image.MAX_IMAGE_PIXELS` (decompression bombs), whatever ours is
PIL_CEILING = 2 * int(Image.MAX_IMAGE_PIXELS or 0)

#: How a command-line or UI user raises the limit (`--max-pixels`, `add_max_pixels_option`)
RAISE_WITH_OPTION = "raise the limit with --max-pixels"
#: How a Python caller raises it
RAISE_WITH_ARGUMENT = "pass a larger max_pixels"


def read_picture(source: str | Path | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str | None = None, how_to_raise: str = RAISE_WITH_ARGUMENT):
    """The picture (a path or an open binary file) as an RGB PIL image. An unreadable or missing file,
    or one above `max_pixels` (None: no limit), is an `InputError` naming it (`name`, default "image 'path'")."""
    with _opened(source, max_pixels, name, how_to_raise) as image:
        return image.convert("RGB")


def picture_size(source: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 how_to_raise: str = RAISE_WITH_ARGUMENT) -> tuple[int, int]:
    """(width, height) from the file's header, nothing decoded: checks a picture before any model loads."""
    with _opened(source, max_pixels, None, how_to_raise) as image:
        return image.size


@contextmanager
def _opened(source: str | Path | BinaryIO, max_pixels: int | None, name: str | None,
            how_to_raise: str) -> Iterator[Image.Image]:
    from PIL import UnidentifiedImageError

    named = name or f"image {str(source)!r}"
    try:
        with Image.open(source) as image:
            check_pixel_count(*image.size, max_pixels, named, how_to_raise)
            yield image
    except Image.DecompressionBombError as exc:  # above PIL's own ceiling, which `Image.open` checks first
        raise InputError(f"{named} is too large to decode ({exc}); make it smaller") from None
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read {named}: {exc}") from exc


def add_max_pixels_option(parser) -> None:
    parser.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="refuse input and style pictures with more pixels than this, read from the file's "
                             "header before decoding (default %(default)s = 40 MP: 8K frames and large camera "
                             "photos pass)")


def pixel_count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= PIL_CEILING:
        raise argparse.ArgumentTypeError(f"{value} is outside 1..{PIL_CEILING} (PIL refuses larger pictures)")
    return value
