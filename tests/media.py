"""Small synthetic media for tests, made with PyAV (no files shipped, no network).

`make_clip` writes a short clip whose frame *i* is recognisable (a gradient shifted by *i* plus a
moving square), with an optional sine-tone audio track, so tests can check frame count, timing,
audio and pixel content of what the job writes.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def clip_frame(i: int, width: int, height: int) -> np.ndarray:
    """Deterministic RGB frame number ``i`` (smooth, so lossy codecs keep it close)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(1, width - 1) + 9 * i) % 256
    img[..., 1] = (y * 255 // max(1, height - 1)) % 256
    img[..., 2] = (40 + 11 * i) % 256
    s = max(4, min(width, height) // 4)
    x0 = (3 * i) % max(1, width - s)
    y0 = (2 * i) % max(1, height - s)
    img[y0 : y0 + s, x0 : x0 + s] = (250, 250, 250)
    return img


def make_clip(
    path: str | Path,
    n_frames: int = 20,
    size: tuple[int, int] = (64, 48),
    fps: int = 15,
    audio: bool | str = True,
    codec: str | None = None,
    sample_rate: int = 22050,
) -> Path:
    """Write a clip of ``n_frames`` frames of ``size`` = (width, height) at ``fps``.

    ``audio``: True → AAC sine tone (PCM for .mov/.mkv is available with ``audio="pcm_s16le"``),
    False → no audio. ``codec`` defaults to libx264 (yuv420p) for even sizes and to FFV1 (which
    accepts odd sizes, in .mkv) otherwise.
    """
    path = Path(path)
    width, height = size
    odd = width % 2 or height % 2
    if codec is None:
        codec = "ffv1" if odd else "libx264"
    container = av.open(str(path), mode="w")
    vs = container.add_stream(codec, rate=fps)
    vs.width, vs.height = width, height
    vs.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
    acodec = {True: "aac"}.get(audio, audio) if audio else None
    astream = None
    if acodec:
        astream = container.add_stream(acodec, rate=sample_rate)
        astream.layout = "mono"
    for i in range(n_frames):
        frame = av.VideoFrame.from_ndarray(clip_frame(i, width, height), format="rgb24")
        for packet in vs.encode(frame):
            container.mux(packet)
    for packet in vs.encode(None):
        container.mux(packet)
    if astream is not None:
        n = int(round(n_frames / fps * sample_rate))
        t = np.arange(n) / sample_rate
        tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        fmt = astream.codec_context.format.name
        step = 1024
        for start in range(0, n, step):
            chunk = tone[start : start + step]
            if fmt.startswith("s16"):
                frame = av.AudioFrame.from_ndarray((chunk * 32767).astype(np.int16)[None], format="s16", layout="mono")
            else:
                frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            frame.sample_rate = sample_rate
            frame.pts = start
            frame.time_base = Fraction(1, sample_rate)
            for packet in astream.encode(frame):
                container.mux(packet)
        for packet in astream.encode(None):
            container.mux(packet)
    container.close()
    return path


def read_frames(path: str | Path) -> list[np.ndarray]:
    """All video frames of ``path`` as RGB arrays."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def probe(path: str | Path) -> dict:
    """Frame count (decoded), fps, size, time base and audio codec/duration of ``path``."""
    with av.open(str(path)) as container:
        v = container.streams.video[0]
        pts = [f.pts for f in container.decode(v)]
    with av.open(str(path)) as container:
        a = container.streams.audio[0] if container.streams.audio else None
        audio_codec = a.codec_context.name if a else None
        audio_seconds = None
        if a is not None:
            end = 0.0
            for p in container.demux(a):
                if p.size and p.pts is not None:
                    end = max(end, float((p.pts + (p.duration or 0)) * p.time_base))
            audio_seconds = end
        v = container.streams.video[0]
        return {
            "frames": len(pts),
            "pts": pts,
            "fps": v.average_rate,
            "time_base": v.time_base,
            "size": (v.codec_context.width, v.codec_context.height),
            "audio": audio_codec,
            "audio_seconds": audio_seconds,
        }
