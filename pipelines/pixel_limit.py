"""The largest picture livediff decodes from a file, checked from the file's header before decoding.

A file of a few KB can declare 8000x8000 pixels; decoding it costs hundreds of MB for a model that works
at about one megapixel. Light on purpose (no torch, no PIL): the command line imports it at start-up.
"""
from __future__ import annotations

from livediff.errors import InputError

#: Most pixels a picture file may have to be decoded (40 MP: 8K UHD frames, 7680x4320 = 33 MP, and the
#: largest common camera photos, 7296x5472 = 40 MP, pass). Decoding costs 3 bytes per pixel and more in
#: PIL's working copies (120 MB and up at the limit) for a model that works at about 1 MP, while a file of a
#: few KB can declare 8000x8000 = 64 MP. PIL's own guard (`Image.MAX_IMAGE_PIXELS`, 89 MP, only a warning
#: below twice that) is meant against decompression bombs, not to bound a server's memory per request.
DEFAULT_MAX_PIXELS = 40_000_000


def check_pixel_count(width: int, height: int, max_pixels: int | None, what: str, how_to_raise: str) -> None:
    """Refuse a `width`x`height` picture above `max_pixels` (None: no limit), read from its header before
    it is decoded; `how_to_raise` ends the sentence (the option or argument that raises the limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"{what} is {width}x{height} ({width * height / 1e6:.1f} MP), above the limit of "
                         f"{max_pixels / 1e6:g} MP; make it smaller or {how_to_raise}")
