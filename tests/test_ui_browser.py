"""A real headless Chromium against the real UI: the fake camera streams (over Gradio's streaming and
over WebRTC), restyled frames come back and the meter shows them; two browser tabs keep separate
sessions. Writes test-artifacts/ui.png and ui-webrtc.png."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ui_helpers import running_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        "--disable-background-networking", "--disable-gpu"]
WAIT_S = 90  # generous: CI machines are slow; nothing here asserts a speed

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (/usr/bin/chromium)")]


@pytest.fixture(scope="module")
def server():
    with running_server(restart_after_s=30.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


def start_stream(page, url: str, prompt: str) -> None:
    """Stream over Gradio's own streaming (the Webcam tab's second transport)."""
    page.goto(url, wait_until="domcontentloaded")
    page.locator("#ctl-prompt textarea").fill(prompt)
    page.locator("#webcam-transport").get_by_text("Gradio streaming", exact=True).click()
    page.get_by_text("Click to Access Webcam").click()
    page.get_by_label("capture photo").click()  # the record button of the streaming camera


def wait_for(condition, what: str, wait_s: float = WAIT_S):
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"gave up after {wait_s} s waiting for {what}")


def output_src(page) -> str | None:
    image = page.locator("#live-output img")
    return image.first.get_attribute("src") if image.count() else None


def meter_fps(page) -> float:
    match = re.search(r"([\d.]+) fps", page.locator("#live-stats").inner_text())
    return float(match.group(1)) if match else 0.0


def test_webcam_stream_round_trips_in_a_real_browser(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    start_stream(page, server.url, "a claymation character")
    seen: set[str] = set()

    def new_frames() -> bool:
        src = output_src(page)
        if src:
            seen.add(src)
        return len(seen) >= 5

    wait_for(new_frames, "5 different restyled frames in the page")
    wait_for(lambda: meter_fps(page) > 0, "the fps meter to read above 0")
    stats = page.locator("#live-stats").inner_text()
    assert re.search(r"latency \d+ ms", stats), stats
    (session,) = server.registry.snapshot().values()
    assert session.applied("webcam").prompt == "a claymation character"
    print(f"\nbrowser webcam stream, tiny 128x128 CPU: {stats}")
    if server.registry.engine.stream_mode == "video":
        page.get_by_text("Feature bank (temporal consistency)").click()  # show its knobs in the screenshot
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui.png"))
    page.close()
    wait_for(lambda: len(server.registry) == 0, "the closed tab's session to be removed")


def test_two_tabs_stream_together_with_separate_sessions(server, browser):
    """Two tabs stream at once: their frames share batches (the server's batcher says so), each keeps
    its prompt, and closing one leaves the other streaming."""
    batcher = server.registry.engine.batcher
    wait = batcher.wait_s
    batcher.wait_s = 0.5  # long enough that the tabs' frames meet on a slow machine; a silent tab costs 0.5 s
    try:
        pages = {prompt: browser.new_page() for prompt in ("a red fox", "a blue whale")}
        for prompt, page in pages.items():
            start_stream(page, server.url, prompt)

        def sessions_by_prompt():
            return {s.applied("webcam").prompt: s for s in server.registry.snapshot().values() if s.applied("webcam")}

        def both_streaming():
            sessions = sessions_by_prompt()
            return sorted(p for p, s in sessions.items() if s.meter.reading().frames >= 3) == ["a blue whale",
                                                                                                 "a red fox"]

        wait_for(both_streaming, "two sessions with their own prompts to stream 3 frames each")
        for page in pages.values():
            wait_for(lambda: output_src(page), "a restyled frame in each tab")
        wait_for(lambda: batcher.stats().max_sessions == 2, "a batch holding both tabs' frames")

        fox = sessions_by_prompt()["a red fox"]
        pages.pop("a blue whale").close()
        wait_for(lambda: "a blue whale" not in sessions_by_prompt(), "the closed tab's session to be removed")
        frames = fox.meter.reading().frames
        wait_for(lambda: fox.meter.reading().frames >= frames + 3, "the remaining tab to stream on")
        pages["a red fox"].close()
    finally:
        batcher.wait_s = wait


# --- WebRTC -----------------------------------------------------------------------------------

def webrtc_sessions(server) -> dict:
    return {sid: s for sid, s in server.registry.snapshot().items() if sid.startswith("webrtc-")}


def frames_shown(page) -> int:
    """Frames the page's <video> has presented from the server's track."""
    return page.evaluate("""() => {
        const video = document.getElementById('webrtc-output');
        return video && video.videoWidth > 0 ? video.getVideoPlaybackQuality().totalVideoFrames : 0;
    }""")


def test_webrtc_stream_round_trips_in_a_real_browser(server, browser):
    """The default transport: frames come back into <video id="webrtc-output"> with the meter, the
    Gradio prompt control acts on the stream live, Stop and closing the tab close the session, and a
    session the server closes ends the stream with a sentence on the page."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server.url, wait_until="domcontentloaded")
    page.locator("#ctl-prompt textarea").fill("a paper cutout")
    page.locator("#webrtc-start").click()
    wait_for(lambda: frames_shown(page) >= 5, "5 restyled frames presented by the WebRTC <video>")
    wait_for(lambda: "fps" in page.locator("#webrtc-stats").inner_text(), "the meter over the data channel")
    assert page.locator("#webrtc-status").inner_text() == "streaming over WebRTC"
    (session,) = webrtc_sessions(server).values()
    assert session.applied("webcam").prompt == "a paper cutout"
    assert page.evaluate("document.getElementById('webrtc-output').videoWidth") == server.registry.engine.width

    page.locator("#ctl-prompt textarea").fill("a glass sculpture")
    wait_for(lambda: session.applied("webcam").prompt == "a glass sculpture", "the new prompt in the WebRTC stream")
    shown = frames_shown(page)
    wait_for(lambda: frames_shown(page) >= shown + 3, "the stream to go on with the new prompt")
    print(f"\nbrowser WebRTC stream, tiny 128x128 CPU: {page.locator('#webrtc-stats').inner_text()}")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-webrtc.png"))

    page.locator("#webrtc-stop").click()
    wait_for(lambda: not webrtc_sessions(server), "Stop to close the stream's session")
    page.locator("#webrtc-start").click()
    wait_for(lambda: webrtc_sessions(server) and frames_shown(page) > 0, "a second stream after Stop")
    (session_id,) = webrtc_sessions(server)
    server.registry.close(session_id)  # the server ends it (idle, shutdown): the page must say so
    status = page.locator('#webrtc-status[data-state="error"]')
    status.wait_for(timeout=WAIT_S * 1000)
    assert "the server ended the stream" in status.inner_text()
    page.locator("#webrtc-start").click()
    wait_for(lambda: webrtc_sessions(server) and frames_shown(page) > 0, "a third stream")
    page.close(run_before_unload=True)  # as a user closes a tab: the page's unload handlers run
    wait_for(lambda: not webrtc_sessions(server) and len(server.registry) == 0,
             "the closed tab's WebRTC session to be removed")
    assert not server.demo.rtc_hub.streams()


def test_a_failed_webrtc_connection_says_so_on_the_page(server, browser):
    """Never a silent fallback: an offer that cannot reach the server ends in a sentence naming the way out."""
    page = browser.new_page()
    page.route("**/webrtc/offer", lambda route: route.abort())
    page.goto(server.url, wait_until="domcontentloaded")
    page.locator("#webrtc-start").click()
    status = page.locator('#webrtc-status[data-state="error"]')
    status.wait_for(timeout=WAIT_S * 1000)
    assert status.inner_text().startswith("WebRTC failed: ") and "Gradio streaming" in status.inner_text()
    page.close()
    wait_for(lambda: len(server.registry) == 0 and not server.demo.rtc_hub.streams(), "nothing left open")
