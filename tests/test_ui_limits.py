"""The UI cannot be made to fill the disk or grow without bound: Gradio's cache of live frames and
uploads is deleted by age, uploads have a size limit, and closed sessions leave nothing behind."""
from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ui_helpers import running_server, tiny_engine


def cached_pictures(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".jpeg", ".jpg", ".webp")]


def test_live_frames_in_gradios_cache_are_deleted_by_age(tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    camera = tmp_path / "camera.png"
    Image.fromarray((np.random.default_rng(0).random((128, 128, 3)) * 255).astype(np.uint8)).save(camera)
    with running_server(cache_age_s=4) as server:
        client = Client(server.url, verbose=False)
        for _ in range(5):
            client.predict(handle_file(str(camera)), api_name="/live_frame")
        assert cached_pictures(cache), "the restyled frames went through Gradio's cache"
        deadline = time.monotonic() + 60
        while cached_pictures(cache) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not cached_pictures(cache), "frames older than the cache age must be deleted"


def test_an_upload_above_the_limit_is_refused_and_the_limit_is_shown(tmp_path):
    from gradio_client import Client, handle_file

    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * 300_000)
    with running_server(max_upload_mb=0.1) as server:
        assert "up to 0.1 MB" in str(server.demo.config)
        client = Client(server.url, verbose=False)
        with pytest.raises(Exception, match="(?i)exceeds the maximum file size|413|too large"):
            client.predict(handle_file(str(big)), api_name="/video")


def test_closed_sessions_leave_no_pipelines_or_folders_behind():
    from livediff.app.ui.sessions import SessionRegistry
    from livediff.app.ui.settings import LiveSettings

    registry = SessionRegistry(tiny_engine())
    wanted = LiveSettings.for_pipeline(registry.engine.stream_template, prompt="oil painting")
    sessions, pipes, folders = [], [], []
    for i in range(200):
        session = registry.get(f"tab-{i}")
        with registry.engine.lock:
            pipe, _ = session.pipeline("webcam", wanted)
        folders.append(session.work_dir)
        sessions.append(weakref.ref(session))
        pipes.append(weakref.ref(pipe))
        registry.close(f"tab-{i}")
    del session, pipe
    gc.collect()
    assert len(registry) == 0
    assert not any(ref() is not None for ref in sessions), "a closed session is still referenced"
    assert not any(ref() is not None for ref in pipes), "a closed session's pipeline is still referenced"
    assert not any(folder.exists() for folder in folders)
    registry.shutdown()


def test_sessions_opened_and_closed_through_gradio_leave_nothing_behind():
    """Real browser-like sessions: each client connects, runs a request (its session gets a
    pipeline), disconnects; Gradio's unload closes it. Nothing of them may stay referenced.
    (6 sessions: a reference kept per session shows as 6 alive ones; more only cost minutes.)"""
    from gradio_client import Client

    sessions, hashes = [], set()
    with running_server() as server:
        for _ in range(6):
            client = Client(server.url, verbose=False)
            client.predict("txt2img", None, prompt="a", api_name="/image")
            sessions += [weakref.ref(s) for s in server.registry.snapshot().values()]
            hashes |= server.registry.snapshot().keys()
            client.close()
        deadline = time.monotonic() + 120
        while len(server.registry) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(server.registry) == 0, f"{len(server.registry)} sessions still open"
        gc.collect()
        alive = sum(ref() is not None for ref in sessions)
        assert alive == 0, f"{alive} closed sessions are still referenced"
        kept = hashes & server.demo.state_holder.session_data.keys()
        assert len(hashes) == 6 and not kept, f"Gradio still keeps {len(kept)} closed pages' state"


def test_a_closed_session_stays_closed_but_an_idle_one_comes_back():
    """An event still in flight when its page unloaded must not re-create the session (nobody would
    close it again); an API client idle past the timeout gets a fresh session when it returns."""
    from livediff.app.ui.sessions import SessionClosed, SessionRegistry

    clock = [0.0]
    registry = SessionRegistry(tiny_engine(), idle_timeout_s=10.0, clock=lambda: clock[0])
    registry.get("unloaded-tab")
    registry.close("unloaded-tab")
    with pytest.raises(SessionClosed, match="unloaded-tab"):
        registry.get("unloaded-tab")
    registry.close("never-opened")  # a WebRTC stream that ended before its first frame
    with pytest.raises(SessionClosed):
        registry.get("never-opened")
    first = registry.get("api-client")
    clock[0] = 60.0
    registry.get("another-client")  # lookups evict the idle ones
    assert "api-client" not in registry
    assert registry.get("api-client") is not first
    assert len(registry) == 2
    registry.shutdown()
