"""The browser UI without a browser: settings diffs, per-session isolation, and the real server
driven over HTTP with gradio_client (image, video and live-frame endpoints)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from livediff.app.ui.settings import LiveSettings, apply_settings, prepare
from livediff.app.ui.sessions import SessionRegistry
from livediff.app.ui.webcam_tab import WebcamStream
from media import clip_frame, make_clip, probe
from ui_helpers import SIZE, running_server, tiny_engine


@pytest.fixture(scope="module")
def engine():
    return tiny_engine()


@pytest.fixture(scope="module")
def server(engine):
    with running_server(engine) as srv:
        yield srv


@pytest.fixture()
def client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def frames(n: int, size: tuple[int, int] = (160, 120)) -> list[np.ndarray]:
    return [clip_frame(i, *size) for i in range(n)]


# --- settings reach a pipeline through its live setters ---------------------------------------

def test_apply_settings_changes_only_what_differs_and_reports_a_refused_value(engine):
    pipe = engine.new_pipeline("img2img")
    base = LiveSettings.for_pipeline(pipe)
    prepare(pipe, base)
    stream = pipe.stream

    applied, refused = apply_settings(pipe, base, replace(base, guidance_scale=2.0, cfg_type="full"))
    assert refused is None and pipe.stream is stream, "guidance must not restart the stream"
    assert (pipe.guidance.guidance_scale, pipe.guidance.cfg_type) == (2.0, "full")

    applied, refused = apply_settings(pipe, applied, replace(applied, prompt="a red fox", strength=0.02))
    assert "strength" in refused
    assert pipe.prompt == "a red fox" and applied.prompt == "a red fox", "changes before the refused one stay"
    assert applied.strength == base.strength and pipe.settings.t_index_list == (32, 45)

    applied, refused = apply_settings(pipe, applied, replace(applied, strength=0.5, seed=7))
    assert refused is None and pipe.stream is not stream
    assert pipe.settings.t_index_list == (25, 45) and pipe.settings.seed == 7


def test_live_settings_reject_wrong_types_with_the_name():
    with pytest.raises(Exception, match="seed"):
        LiveSettings(seed=1.5)
    with pytest.raises(Exception, match="strength"):
        LiveSettings(strength=None)
    with pytest.raises(Exception, match=f"expected {len(LiveSettings.names())} settings"):
        LiveSettings.from_values(["x"])


# --- sessions ---------------------------------------------------------------------------------

def test_interleaved_sessions_give_exactly_what_each_gives_alone(engine, tmp_path):
    """Two tabs streaming at once (frames interleaved, different prompts, seeds and strengths) get
    bit-identical output to each tab streaming alone: no buffer, noise or prompt is shared."""
    a = LiveSettings.for_pipeline(engine.stream_template, prompt="a red fox")
    b = replace(a, prompt="a blue whale", seed=5, strength=0.5)
    clip = frames(3)
    alone = WebcamStream(SessionRegistry(engine, work_root=tmp_path / "alone"), restart_after_s=1e9)
    expected_a = [alone.process("solo", f, a).image for f in clip]
    stream = WebcamStream(SessionRegistry(engine, work_root=tmp_path / "both"), restart_after_s=1e9)
    got_a, got_b = [], []
    for f in clip:
        got_a.append(stream.process("tab-a", f, a).image)
        got_b.append(stream.process("tab-b", f[::-1].copy(), b).image)  # B even sees other frames
    assert all(np.array_equal(x, y) for x, y in zip(got_a, expected_a))
    assert not all(np.array_equal(x, y) for x, y in zip(got_a, got_b))
    registry = stream.registry
    assert registry.get("tab-a").applied("webcam").prompt == "a red fox"
    assert registry.get("tab-b").applied("webcam").seed == 5
    assert registry.get("tab-a").meter.reading().frames == registry.get("tab-b").meter.reading().frames == 3


def test_a_pause_restarts_the_stream_so_no_picture_of_the_old_scene_comes_back(engine, tmp_path):
    settings = LiveSettings.for_pipeline(engine.stream_template, prompt="a red fox")
    clip = frames(2)
    fresh = [WebcamStream(SessionRegistry(engine, work_root=tmp_path / f"fresh{i}")).process("s", f, settings).image
             for i, f in enumerate(clip)]
    continuous = WebcamStream(SessionRegistry(engine, work_root=tmp_path / "c"), restart_after_s=1e9)
    kept = [continuous.process("s", f, settings).image for f in clip]
    paused = WebcamStream(SessionRegistry(engine, work_root=tmp_path / "p"), restart_after_s=0.0)
    restarted = [paused.process("s", f, settings).image for f in clip]  # every gap counts as a pause
    assert all(np.array_equal(x, y) for x, y in zip(restarted, fresh))
    assert not np.array_equal(kept[1], fresh[1]), "without a pause the stream batch carries the frames on"


def test_a_picture_reused_by_the_similarity_filter_is_flagged_and_keeps_aging(engine, tmp_path):
    stream = WebcamStream(SessionRegistry(engine, work_root=tmp_path), restart_after_s=1e9)
    settings = LiveSettings.for_pipeline(engine.stream_template, similarity_filter=True,
                                         similarity_threshold=0.5, similarity_max_skip=1)
    still = frames(1)[0]
    first, second, third = (stream.process("s", still, settings) for _ in range(3))
    assert first.advanced and not second.advanced and third.advanced, "max_skip=1: one reuse, then a new picture"
    assert second.image is first.image


def test_registry_evicts_idle_sessions_and_removes_their_files(engine, tmp_path):
    now = [0.0]
    registry = SessionRegistry(engine, idle_timeout_s=10, work_root=tmp_path, clock=lambda: now[0])
    old = registry.get("old")
    scratch = old.work_dir
    (scratch / "out.mp4").write_bytes(b"x")
    now[0] = 5.0
    registry.get("busy")
    now[0] = 12.0
    registry.touch("busy")
    registry.get("new")  # 12 s after "old" was last used: evicted; "busy" was touched at 12
    assert "old" not in registry and "busy" in registry and "new" in registry
    assert not scratch.exists()
    registry.close("busy")
    assert len(registry) == 1


def test_bank_and_token_merging_rebuild_the_stream_over_the_same_networks(engine, tmp_path):
    if engine.stream_mode != "video":
        pytest.skip("this build has no video (feature bank) mode")
    session = SessionRegistry(engine, work_root=tmp_path).get("tab")
    base = LiveSettings.for_pipeline(engine.stream_template)
    on, _ = session.pipeline("webcam", base)
    assert on.bank is not None
    off, refused = session.pipeline("webcam", replace(base, bank=False, token_merge_ratio=0.5))
    assert refused is None and off is not on and off.bank is None
    assert off.config.token_merge_ratio == 0.5 and off.models is on.models, "networks are shared, not reloaded"
    again, _ = session.pipeline("webcam", replace(base, bank=False, token_merge_ratio=0.5, prompt="new"))
    assert again is off and off.prompt == "new"


# --- the real server over HTTP -----------------------------------------------------------------

def test_image_endpoint_img2img_and_txt2img(client, tmp_path):
    from gradio_client import handle_file

    source = tmp_path / "in.png"
    Image.fromarray(clip_frame(3, 200, 150)).save(source)
    out, info = client.predict("img2img", handle_file(str(source)), prompt="oil painting", api_name="/image")
    # restyled at the picture's own aspect and returned at its own size: nothing cut off
    assert Image.open(out).size == (200, 150) and info.startswith("img2img at 128x96")

    first, _ = client.predict("txt2img", None, prompt="a cat", seed=11, api_name="/image")
    again, _ = client.predict("txt2img", None, prompt="a cat", seed=11, api_name="/image")
    other, _ = client.predict("txt2img", None, prompt="a cat", seed=12, api_name="/image")
    pixels = [np.asarray(Image.open(p)) for p in (first, again, other)]
    assert np.array_equal(pixels[0], pixels[1]), "same prompt and seed, same picture"
    assert not np.array_equal(pixels[0], pixels[2])


def test_image_endpoint_errors_are_one_sentence(client, tmp_path, monkeypatch):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="img2img needs an input image"):
        client.predict("img2img", None, api_name="/image")

    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 8000)).save(huge)  # 64 MP in a few KB
    decoded = []  # the server runs in this process: no picture of the upload's size may be decoded
    load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or load(self))
    with pytest.raises(AppError, match=r"^the input image is 8000x8000 \(64\.0 MP\), above the limit of 40 MP; "
                                       r"make it smaller or raise the limit with --max-pixels$"):
        client.predict("img2img", handle_file(str(huge)), api_name="/image")
    assert (8000, 8000) not in decoded


def test_video_endpoint_keeps_frames_fps_and_audio_and_reports_metrics(client, tmp_path):
    from gradio_client import handle_file

    clip = make_clip(tmp_path / "clip.mp4", n_frames=12, size=(64, 48), fps=15, audio=True)
    video, files, table, summary = client.predict(handle_file(str(clip)), prompt="claymation", api_name="/video")
    src, out = probe(clip), probe(video)
    assert out["frames"] == src["frames"] == 12
    assert out["size"] == src["size"] == (64, 48)  # a non-square upload is not centre-cropped
    assert out["fps"] == src["fps"] and out["audio"] is not None
    assert "warp error (edited)" in table and summary.startswith("12 frames")
    metrics = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert metrics["frames_used"] == 12 and metrics["fps"] > 0

    again, *_ = client.predict(handle_file(str(clip)), prompt="watercolor", api_name="/video")
    assert again != video and Path(video).name == Path(again).name == "clip-livediff.mp4"
    assert probe(again)["frames"] == 12 and Path(video).is_file(), "a second run keeps the first output"


def test_video_job_errors_are_said_in_the_pages_words(tmp_path):
    from livediff.app.ui.video_tab import in_page_words

    source, output = tmp_path / "upload" / "clip.mp4", tmp_path / "session-x" / "run-1" / "clip-livediff.mp4"
    said = in_page_words(f"{output} already exists; pass --overwrite to replace it (each only once its new version "
                         f"is finished) or --resume to keep finished outputs and continue interrupted ones", source, output)
    assert said == "the restyled video already exists"
    said = in_page_words(f"{source}: the disk is full while writing {output}; free space and run again with --resume",
                         source, output)
    assert said == "the uploaded video: the disk is full while writing the restyled video"


def test_an_unusable_control_value_keeps_the_stream_going_and_is_reported(client, tmp_path):
    from gradio_client import handle_file

    path = tmp_path / "f.png"
    Image.fromarray(frames(1)[0]).save(path)
    image, stats = client.predict(handle_file(str(path)), seed=None, api_name="/live_frame")
    assert Image.open(image).size == (SIZE, SIZE)
    assert "setting not applied" in stats and "seed" in stats


def test_two_clients_stream_with_separate_state(server, tmp_path):
    """Two API clients (two sessions) send frames alternately with different prompts: the server
    keeps one session each, with its own prompt and its own frame count."""
    from gradio_client import Client, handle_file

    paths = []
    for i, f in enumerate(frames(3)):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(f).save(paths[-1])
    clients = {prompt: Client(server.url, verbose=False) for prompt in ("a red fox", "a blue whale")}
    before = set(server.registry.snapshot())
    for path in paths:
        for prompt, c in clients.items():
            image, stats = c.predict(handle_file(str(path)), prompt=prompt, api_name="/live_frame")
            assert Image.open(image).size == (SIZE, SIZE) and "latency" in stats
    sessions = [s for sid, s in server.registry.snapshot().items() if sid not in before]
    assert sorted(s.applied("webcam").prompt for s in sessions) == ["a blue whale", "a red fox"]
    assert [s.meter.reading().frames for s in sessions] == [3, 3]


def test_ui_command_reports_a_missing_model_in_one_sentence(monkeypatch, capsys):
    from livediff.app.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["ui", "--model", "nobody/no-such-model", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "nobody/no-such-model" in err and "cannot be downloaded" in err and "Traceback" not in err


def test_live_frames_of_concurrent_clients_share_batches_and_stay_separate(server, tmp_path):
    """Two API clients stream at the same time: their frames go through the networks together
    (the status endpoint says so), each keeps its own prompt, and once one leaves the other streams
    on without waiting for it."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    batcher = server.registry.engine.batcher
    paths = []
    for i, f in enumerate(frames(4)):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(f).save(paths[-1])
    before = set(server.registry.snapshot())
    clients = {prompt: Client(server.url, verbose=False) for prompt in ("a red fox", "a blue whale")}

    def stream(prompt: str) -> int:
        delivered = 0
        for path in paths:
            image, stats = clients[prompt].predict(handle_file(str(path)), prompt=prompt, api_name="/live_frame")
            delivered += Image.open(image).size == (SIZE, SIZE)
        return delivered

    wait = batcher.wait_s
    batcher.wait_s = 2.0  # long enough that the two clients' frames always meet, however slow the machine
    try:
        with ThreadPoolExecutor(2) as pool:
            delivered = list(pool.map(stream, clients))
    finally:
        batcher.wait_s = wait
    assert delivered == [4, 4]
    sessions = {sid: s for sid, s in server.registry.snapshot().items() if sid not in before}
    assert sorted(s.applied("webcam").prompt for s in sessions.values()) == ["a blue whale", "a red fox"]
    stats = clients["a red fox"].predict(api_name="/server_stats")
    assert stats["max_sessions"] == 2 and stats["sessions"] >= 2
    assert stats["nonfinite_values"] == stats["nonfinite_frame_stages"] == 0  # issue 26, defect 8: shown

    whale = next(sid for sid, s in sessions.items() if s.applied("webcam").prompt == "a blue whale")
    server.registry.close(whale)
    batcher.wait_s = 30.0  # were the closed session still counted, the next frame would wait this long
    try:
        with ThreadPoolExecutor(1) as pool:
            future = pool.submit(clients["a red fox"].predict, handle_file(str(paths[0])), prompt="a red fox",
                                 api_name="/live_frame")
            image, _ = future.result(timeout=25)
    finally:
        batcher.wait_s = wait
    assert Image.open(image).size == (SIZE, SIZE)
