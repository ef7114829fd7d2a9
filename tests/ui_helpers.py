"""A real UI server for tests: the tiny model at 128x128 on CPU, on a free local port."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import gradio as gr

    from livediff.app.ui.sessions import SessionRegistry

SIZE = 128


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_engine(**overrides):
    from livediff.app.ui.engine import Engine

    return Engine(dict(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32", **overrides))


def record_pacing(monkeypatch) -> list[bool]:
    """Whether each frame a causal stream's `ChunkPacer` took showed a finished frame, in order."""
    from livediff.app.ui import causal_live

    paced = []
    push = causal_live.ChunkPacer.push

    def spy(self, arrived, finished):
        shown = push(self, arrived, finished)
        paced.append(shown is not None)
        return shown

    monkeypatch.setattr(causal_live.ChunkPacer, "push", spy)
    return paced


def causal_engine(size: int = 64):
    """Stream mode causal-video: `tiny-wan-causal`, chunks of 1 latent frame (4 video frames, 3 frames late)."""
    from livediff.app.ui.engine import Engine

    return Engine(dict(model="tiny-wan-causal", width=size, height=size, device="cpu", dtype="float32",
                       causal=dict(chunk_frames=1)), stream_mode="causal-video")


@dataclass
class RunningServer:
    url: str
    registry: SessionRegistry
    demo: gr.Blocks


@contextmanager
def running_server(engine=None, **launch_options) -> Iterator[RunningServer]:
    """Tests drive sessions one request after another, so one session's gap includes the others'
    calls: the restart-after-pause rule is set out of reach unless a test sets it."""
    launch_options.setdefault("restart_after_s", 1e9)
    from livediff.app.ui.server import launch
    from livediff.app.ui.sessions import SessionRegistry

    registry = SessionRegistry(engine or tiny_engine())
    port = free_port()
    demo = launch(registry, port=port, **launch_options)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}/", registry, demo)
    finally:
        demo.close()
        registry.shutdown()
