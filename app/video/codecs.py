"""Which encoder and quality settings a video is written with (PyAV only).

Codec choice: the default is ``libx264`` (present in the PyAV wheels). If a PyAV build lacks it,
the default becomes the built-in ``mpeg4`` encoder (always present); a codec the user *names* and
that is missing is an error, never silently replaced.
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

import av

from livediff.errors import ConfigError

#: File name suffixes treated as video when a folder is scanned.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp"}
)

#: Encoders that take a constant-rate-factor quality (an int, lower = better).
CRF_CODECS = frozenset({"libx264", "libx264rgb", "libx265"})

#: Default CRF: visually near-transparent for restyled content, moderate size.
DEFAULT_CRF = 20

AudioMode = Literal["auto", "copy", "aac", "none"]
Quality = int | str | None

FFMPEG_ERRORS: tuple[type[BaseException], ...] = (av.FFmpegError, OSError, EOFError, UnicodeDecodeError)


def short_error(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


def codec_available(name: str) -> bool:
    """Whether this PyAV build can *encode* with codec ``name``."""
    try:
        av.codec.Codec(name, "w")
    except Exception:  # UnknownCodecError, ValueError, ...
        return False
    return True


def default_codec() -> str:
    """``libx264`` when this PyAV build has it (the wheels do), else the built-in ``mpeg4``."""
    return "libx264" if codec_available("libx264") else "mpeg4"


def resolve_codec(codec: str | None) -> str:
    """Return the encoder to use; ``None`` means :func:`default_codec`. A named, missing codec is an error."""
    if codec is None:
        return default_codec()
    if not codec_available(codec):
        raise ConfigError(
            f"video codec {codec!r} is not available in this PyAV build; "
            f"use 'libx264' if present or 'mpeg4' (always built in)"
        )
    if av.codec.Codec(codec, "w").type != "video":
        raise ConfigError(f"{codec!r} is not a video codec")
    return codec


_BITRATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:bps|b)?\s*$")


def parse_bitrate(value: str) -> int:
    """``"800k"`` → 800000, ``"4M"`` → 4000000, ``"2500000"`` → 2500000 (bits per second)."""
    m = _BITRATE_RE.match(value)
    if not m:
        raise ConfigError(f"bitrate {value!r} is not understood; write e.g. '800k' or '4M'")
    number = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[m.group(2).lower()]
    if number < 1e4:
        raise ConfigError(f"bitrate {value!r} is below 10k bits/s; write e.g. '800k' or '4M'")
    return int(number)


def encoder_settings(
    codec: str, quality: Quality, width: int, height: int, fps: Fraction
) -> tuple[dict[str, str], int | None]:
    """Translate the user's ``quality`` into encoder options and a bit rate.

    ``quality`` is an int CRF (0–51, lower is better; only for x264/x265), a bitrate string such as
    ``"4M"`` (any codec), or ``None`` for the default: CRF 20 on CRF codecs, otherwise a generous
    0.2 bit per pixel per frame (the ffmpeg default of 200 kbit/s for mpeg4 looks poor).
    """
    options: dict[str, str] = {}
    bit_rate: int | None = None
    if isinstance(quality, bool):
        raise ConfigError(f"quality {quality!r} is not understood; give a CRF int (x264) or a bitrate like '4M'")
    if isinstance(quality, int):
        if codec not in CRF_CODECS:
            raise ConfigError(
                f"quality {quality} is a CRF, which codec {codec!r} does not take; give a bitrate such as '4M'"
            )
        if not 0 <= quality <= 51:
            raise ConfigError(
                f"CRF {quality} is out of range; allowed 0 (lossless) to 51 (worst), default {DEFAULT_CRF}"
            )
        options["crf"] = str(quality)
    elif isinstance(quality, str):
        bit_rate = parse_bitrate(quality)
    elif quality is None:
        if codec in CRF_CODECS:
            options["crf"] = str(DEFAULT_CRF)
        else:
            bit_rate = max(400_000, int(width * height * float(fps) * 0.2))
    else:
        raise ConfigError(f"quality {quality!r} is not understood; give a CRF int (x264) or a bitrate like '4M'")
    if codec == "libx265":
        options["x265-params"] = "log-level=error"  # x265 prints ~25 info lines per file on its own stderr
    return options, bit_rate
