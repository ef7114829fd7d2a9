"""The Image tab: one picture through img2img, or one from text through txt2img."""
from __future__ import annotations

from livediff.app.live_metrics import now
from livediff.app.ui.frames import fit_frame
from livediff.app.ui.sessions import SessionRegistry
from livediff.app.ui.settings import LiveSettings
from livediff.errors import ConfigError, InputError

IMAGE_MODES = ("img2img", "txt2img")


def restyle_image(registry: SessionRegistry, session_id: str, mode: str, image, settings: LiveSettings):
    """Returns (picture, one-line report). Each call restarts the stream, so a picture depends only
    on its input, prompt and seed, not on what the session ran before."""
    if mode not in IMAGE_MODES:
        raise ConfigError(f"image mode {mode!r} is not one of {', '.join(IMAGE_MODES)}")
    engine = registry.engine
    if mode == "img2img":
        if image is None:
            raise InputError("img2img needs an input image: upload one (or switch to txt2img)")
        image = fit_frame(image, engine.width, engine.height)
    session = registry.get(session_id)
    with engine.lock:
        pipe, refused = session.pipeline(mode, settings)
        if refused:
            raise ConfigError(refused)
        pipe.reset()
        started = now()
        picture = pipe(image) if mode == "img2img" else pipe()
        seconds = now() - started
    return picture, f"{mode} at {engine.width}x{engine.height} in {seconds * 1000:.0f} ms"
