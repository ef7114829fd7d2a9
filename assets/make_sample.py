"""Generate ``assets/sample.mp4``: a small procedural clip for demos, docs and smoke tests.

3 s, 320x240, 24 fps, H.264 (yuv420p) with a mono AAC track: a slowly drifting textured
background, a bouncing ball, a rotating box and a sliding stripe, plus a two-note sine tone
(A4 then E5) with soft fades. Everything is computed from the frame index (no randomness left
to chance, no downloads), so re-running gives the same picture.

    python assets/make_sample.py            # writes assets/sample.mp4 next to this file
    python assets/make_sample.py out.mp4    # or anywhere else
"""
from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 24, 3
SAMPLE_RATE = 44100


def _texture(width: int, height: int) -> np.ndarray:
    """A fixed, tileable, smooth-ish texture (sum of a few sinusoids plus fine grain)."""
    y, x = np.mgrid[0 : height * 2, 0 : width * 2].astype(np.float32)
    rng = np.random.default_rng(1234)
    grain = cv2.GaussianBlur(rng.normal(0, 1, x.shape).astype(np.float32), (0, 0), 1.5)
    base = (
        0.5
        + 0.18 * np.sin(x / 23.0) * np.cos(y / 31.0)
        + 0.12 * np.sin((x + y) / 11.0)
        + 0.08 * grain
    )
    return np.clip(base, 0, 1)


def frame_at(i: int, texture: np.ndarray) -> np.ndarray:
    t = i / FPS
    dx, dy = int(40 * t) % WIDTH, int(25 * t) % HEIGHT
    tex = texture[dy : dy + HEIGHT, dx : dx + WIDTH]
    hue = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :]
    img = np.empty((HEIGHT, WIDTH, 3), np.float32)
    img[..., 0] = tex * (0.55 + 0.35 * hue)
    img[..., 1] = tex * 0.75
    img[..., 2] = tex * (0.9 - 0.4 * hue)
    img = (img * 255).astype(np.uint8)

    # sliding stripe
    sx = int((t / SECONDS) * (WIDTH + 60)) - 60
    cv2.rectangle(img, (sx, 0), (sx + 30, HEIGHT), (240, 200, 60), -1)
    # rotating box
    box = cv2.boxPoints(((WIDTH * 0.7, HEIGHT * 0.35), (70, 45), 120 * t))
    cv2.fillPoly(img, [box.astype(np.int32)], (60, 120, 230), lineType=cv2.LINE_AA)
    # bouncing ball
    bx = 40 + (WIDTH - 80) * abs(((t * 0.45) % 2) - 1)
    by = HEIGHT - 40 - (HEIGHT - 90) * abs(np.sin(np.pi * t * 1.2))
    cv2.circle(img, (int(bx), int(by)), 26, (220, 60, 70), -1, lineType=cv2.LINE_AA)
    cv2.circle(img, (int(bx) - 8, int(by) - 9), 7, (255, 220, 220), -1, lineType=cv2.LINE_AA)
    return img


def tone(seconds: float) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    freq = np.where(t < seconds / 2, 440.0, 659.25)
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    fade = np.minimum(1.0, np.minimum(t, seconds - t) / 0.05)
    return (0.25 * np.sin(phase) * fade).astype(np.float32)


def make_sample(path: str | Path) -> Path:
    path = Path(path)
    container = av.open(str(path), mode="w")
    video = container.add_stream("libx264", rate=FPS, options={"crf": "26", "preset": "slow"})
    video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    audio = container.add_stream("aac", rate=SAMPLE_RATE)
    audio.layout = "mono"
    audio.bit_rate = 64_000
    texture = _texture(WIDTH, HEIGHT)
    for i in range(FPS * SECONDS):
        frame = av.VideoFrame.from_ndarray(frame_at(i, texture), format="rgb24")
        frame.pts = i
        frame.time_base = Fraction(1, FPS)
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode(None):
        container.mux(packet)
    samples = tone(SECONDS)
    for start in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, start : start + 1024], format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
        for packet in audio.encode(frame):
            container.mux(packet)
    for packet in audio.encode(None):
        container.mux(packet)
    container.close()
    return path


if __name__ == "__main__":
    out = make_sample(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("sample.mp4"))
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
