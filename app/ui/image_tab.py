"""The Image tab: one picture through img2img, or one from text through txt2img.

An uploaded picture is restyled at its own aspect (longest side the server's size, sides multiples
of 8) and comes back at its own size: nothing is cut off. Gradio hands the upload over as a file, not
decoded: its size is checked from the header against the server's pixel limit first (`app.pictures`).
"""
from __future__ import annotations

import cv2
import numpy as np

from livediff.app.pictures import RAISE_WITH_OPTION, read_picture

from livediff.app.live_metrics import now
from livediff.app.ui.frames import fit_frame
from livediff.app.ui.sessions import SessionRegistry
from livediff.app.ui.settings import LiveSettings
from livediff.app.video.geometry import suggest_working_size
from livediff.errors import ConfigError, InputError

IMAGE_MODES = ("img2img", "txt2img")
#: Why the tab does nothing on a causal-video server (also shown on the tab)
CAUSAL_REFUSAL = ("the Image tab restyles single pictures with an image model; this server runs a causal video "
                  "model (stream mode causal-video), which needs a stream of frames: use the Webcam tab, or start "
                  "the server with an image model for single pictures")


def restyle_image(registry: SessionRegistry, session_id: str, mode: str, upload: str | None,
                  settings: LiveSettings):
    """`upload`: the input picture's file (img2img). Returns (picture, one-line report). Each call
    restarts the stream, so a picture depends only on its input, prompt and seed, not on what the
    session ran before."""
    if mode not in IMAGE_MODES:
        raise ConfigError(f"image mode {mode!r} is not one of {', '.join(IMAGE_MODES)}")
    engine = registry.engine
    if engine.stream_mode == "causal-video":
        raise ConfigError(CAUSAL_REFUSAL)
    size = None
    if mode == "img2img":
        if upload is None:
            raise InputError("img2img needs an input image: upload one (or switch to txt2img)")
        image = np.asarray(read_picture(upload, registry.max_pixels, name="the input image",
                                        how_to_raise=RAISE_WITH_OPTION))
        original = image.shape[1], image.shape[0]
        size = suggest_working_size(*original, longest=max(engine.width, engine.height))
        image = fit_frame(image, *size)
    session = registry.get(session_id)
    with engine.lock:
        pipe, refused = session.pipeline(mode, settings, size)
        if refused:
            raise ConfigError(refused)
        pipe.reset()
        started = now()
        picture = pipe(image) if mode == "img2img" else pipe()
        seconds = now() - started
    width, height = size or (engine.width, engine.height)
    if mode == "img2img" and (width, height) != original:
        picture = cv2.resize(picture, original, interpolation=cv2.INTER_LINEAR)
    return picture, f"{mode} at {width}x{height} in {seconds * 1000:.0f} ms"
