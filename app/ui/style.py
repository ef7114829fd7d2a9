"""IP-Adapter in the UI: a style picture and its scale, live settings like the others.

Every event carries every control's value, so a webcam stream gets the style picture with each
frame. Encoding it (CLIP, then the adapter's K/V) per frame would cost more than the frame, so a
`StyleImage` keeps the picture's bytes and a hash of them: settings compare by that hash and the
pipeline's `set_style_image` runs only when it changes. The Gradio control hands over a file path
(not a decoded array), so an unchanged picture costs a file read and a hash per event, no decode.
Each read also marks the file as just used: Gradio deletes uploads `cache_age_s` after their last
change, and a style picture stays on the page (and in every event) far longer than a camera frame.

Removing the picture builds the session a new pipeline (`needs_new_pipeline`): a pipeline that was
never given a style image runs exactly as the plain model (its image values are zero), which a scale
of 0 would also give but would leave the slider saying otherwise. The new pipeline restarts that
stream, as a feature-bank change does.

The controls exist only on servers whose pipelines have an IP-Adapter: elsewhere the API has no
`style_image` / `style_scale` parameters, as it has no `control_scale_<i>` without ControlNets.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from livediff.app.pictures import RAISE_WITH_OPTION, read_picture
from livediff.errors import ConfigError, InputError
from livediff.pipelines.pixel_limit import DEFAULT_MAX_PIXELS

STYLE_NAMES = ("style_image", "style_scale")
PREVIEW_HEIGHT = 160


class StyleImage:
    """A style picture as it arrived (file bytes or an array) and the hash that identifies it; equal
    when the hashes are, so settings holding one compare without looking at the pixels."""

    __slots__ = ("key", "_data", "_array")

    def __init__(self, key: str, data: bytes | None = None, array: np.ndarray | None = None):
        self.key, self._data, self._array = key, data, array

    @classmethod
    def of(cls, value: Any) -> "StyleImage | None":
        """A control value (None, a file path as Gradio passes it, a `{"path": ...}` file dict, an
        RGB array or a PIL image) as a StyleImage; None means no style picture."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            value = value.get("path")
            if value is None:
                return None
        if isinstance(value, (str, Path)):
            try:
                data = Path(value).read_bytes()
            except OSError as exc:
                raise InputError(f"cannot read the style image {str(value)!r}: {exc.strerror}") from exc
            try:
                os.utime(value)
            except OSError:  # a read-only picture is not Gradio's to delete either
                pass
            return cls(hashlib.blake2b(data, digest_size=16).hexdigest(), data=data)
        if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
            value = np.asarray(value.convert("RGB"))
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            digest = hashlib.blake2b(array.tobytes(), digest_size=16)
            digest.update(f"{array.shape}{array.dtype}".encode())
            return cls(digest.hexdigest(), array=array)
        raise ConfigError(f"style image {type(value).__name__} must be a picture file, an array or a PIL image")

    def picture(self, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
        """The picture as (H, W, 3) uint8 RGB, decoded now (only when it is about to be encoded); a
        file above `max_pixels` is refused from its header (an array arrived decoded: not limited)."""
        if self._array is not None:
            return self._array
        return np.asarray(read_picture(io.BytesIO(self._data), max_pixels, name="the style image",
                                       how_to_raise=RAISE_WITH_OPTION))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StyleImage) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"StyleImage({self.key[:12]})"


def needs_new_pipeline(applied, wanted) -> bool:
    """True when the style picture was removed: only a pipeline never given one is the plain model."""
    return applied.style_image is not None and wanted.style_image is None


def set_style(pipe, wanted: StyleImage | None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
    """Encode a new style picture into `pipe` (its one encoding per change). A picture that cannot be
    read is a refused setting (`ConfigError`): the stream goes on with the style it has."""
    if wanted is None:
        raise ConfigError("removing the style image needs a new pipeline (the UI session builds one)")
    try:
        pipe.set_style_image(wanted.picture(max_pixels))
    except InputError as exc:
        raise ConfigError(str(exc)) from exc


def set_scale(pipe, scale: float | None) -> None:
    """The live IP-Adapter scale; None (settings made without the style controls) keeps the pipeline's."""
    if scale is not None:
        pipe.set_ip_adapter_scale(scale)


def style_controls(template, defaults) -> list:
    """The style picture and scale controls, in `LiveSettings.names(n, ip_adapter=True)` order; none
    when the server's pipelines have no IP-Adapter. Elem ids `ctl-style_image`, `ctl-style_scale`."""
    if getattr(template.models, "ip_adapter", None) is None:  # (a causal video model has none)
        return []
    import gradio as gr

    initial = defaults.style_image.picture() if defaults.style_image is not None else None
    with gr.Accordion("Style image (IP-Adapter)", open=True):
        # filepath, image_mode None: Gradio hands over the upload as it is, nothing decoded per event
        image = gr.Image(value=initial, label="Style image", type="filepath", image_mode=None, format="png",
                         sources=["upload", "clipboard"], height=PREVIEW_HEIGHT, elem_id="ctl-style_image")
        scale = gr.Slider(0.0, 2.0, value=defaults.style_scale, step=0.05, label="Style scale",
                          info="how strongly the picture styles the frames; 0 = off",
                          elem_id="ctl-style_scale")
    return [image, scale]
