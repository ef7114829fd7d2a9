"""ControlNet in the UI: a scale slider per ControlNet, and a live preview of the webcam stream's control image.

The scales are ordinary live settings (`LiveSettings.control_scales`): they travel with every
event like the other controls and reach a pipeline through its live setter, so they act on running
webcam streams of both transports and on the Image and Video tabs alike. The preprocessor is not a
control: it is fixed when the server starts (a canny and a depth ControlNet are different networks),
so each slider's label names it.

The preview is polled (`PREVIEW_EVERY_S`) rather than sent with each frame: one way for both
transports (WebRTC frames never pass through Gradio), and its cost is a few small JPEGs a second
however fast the stream runs; a tick with no new control image sends nothing. Reading a control
image back is device work (a device-to-host copy), so it takes `Engine.lock` like every network
call: it can never run inside another call's CUDA graph capture (global capture mode refuses any
other thread's device work meanwhile).
"""
from __future__ import annotations

import threading

import gradio as gr
import numpy as np

from livediff.app.ui.sessions import SessionRegistry
from livediff.app.ui.settings import LiveSettings
from livediff.pipelines import control_registry

#: Seconds between preview polls of a tab (a few Hz: enough to see the edges follow the camera).
PREVIEW_EVERY_S = 0.3
PREVIEW_HEIGHT = 160


def scale_sliders(template_config, defaults: LiveSettings) -> list[gr.Slider]:
    """One 0..2 slider per ControlNet of the server's pipelines (none without ControlNets), in
    `LiveSettings.names(n)` order; elem ids `ctl-control_scale_<i>`. Each says what its preprocessor
    makes (`PreprocessorSpec.summary`, from the registry)."""
    specs = template_config.controlnet
    if not specs:
        return []
    sliders = []
    with gr.Accordion("ControlNet", open=True):
        for i, spec in enumerate(specs):
            sliders.append(gr.Slider(0.0, 2.0, value=defaults.control_scales[i], step=0.05,
                                     label=f"ControlNet {i + 1} scale · {spec.preprocessor} · {spec.model}",
                                     info=f"0 = off; control image: "
                                          f"{control_registry.get(spec.preprocessor).summary}; the "
                                          f"preprocessor is fixed at server start",
                                     elem_id=f"ctl-control_scale_{i}"))
    return sliders


def control_picture(control: tuple) -> np.ndarray | None:
    """The first ControlNet's control image of the latest frame as (H,W,3) uint8, or None if there is none."""
    if not control:
        return None
    latest = control[0][-1].detach().float().clamp(0, 1).mul(255).round().to("cpu").numpy()
    return latest.astype(np.uint8).transpose(1, 2, 0)


class ControlPreview:
    """A tab's newest control image: from its WebRTC stream's session when it has one (`stream_of`),
    else from its own webcam stream (Gradio streaming). Each control image is sent once."""

    def __init__(self, registry: SessionRegistry, stream_of):
        self.registry = registry
        self._stream_of = stream_of  # owner session id → its WebRTC stream's session id, or None
        self._sent: dict[str, object] = {}  # owner → the control tuple it was last sent
        self._lock = threading.Lock()
        registry.on_close(self.forget)

    def latest(self, owner: str) -> np.ndarray | None:
        """The owner's newest control image not sent yet, or None (nothing new: send nothing)."""
        for session_id in (self._stream_of(owner), owner):
            session = self.registry.peek(session_id) if session_id else None
            pipe = session.current("webcam") if session else None
            control = getattr(pipe, "last_control", ())
            if control:
                with self._lock:
                    if self._sent.get(owner) is control:
                        return None
                    self._sent[owner] = control
                with self.registry.engine.lock:
                    return control_picture(control)
        return None

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._sent.pop(session_id, None)
