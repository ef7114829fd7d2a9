"""Glass-to-glass numbers of the browser webcam path, for either transport of the Webcam tab: a real
headless Chromium streams a camera into the UI server for a while and records when each camera
frame was captured and when each restyled frame was displayed.

    python benchmarks/webcam_latency.py --model tiny --size 128 --seconds 20 --transport webrtc

How: the page's camera is a canvas (`getUserMedia` is replaced by `canvas.captureStream`) drawn
every `--stream-every` seconds with its frame number stamped into the picture as black/white
cells; the server reads the number off each frame that reaches the handler and stamps it into the
picture it returns; the page reads it off each displayed picture (the `load` of the Gradio `<img>`,
or `requestVideoFrameCallback` of the WebRTC `<video>`). So every displayed picture names the
camera frame it was made from, on either transport. Reported, with the page's own meter:

* displayed fps: restyled pictures shown per second, counted in the page (for WebRTC the
  `<video>`'s own count of presented pictures: a busy page may skip a callback, not a picture);
* capture→display latency: display time − capture time of the camera frame in the picture (the
  stream batch's delay of `stages − 1` calls is counted: a model picture holds an older frame);
  split into capture→server (the camera frame's way up) and server→display (the rest);
* frames captured vs processed: the difference is what was dropped as stale.

Browser and server share the machine's wall clock. `--pass-through` takes the model out of the way
(each frame comes back as it went in, through the same server path: session, settings, batcher and
the transport): what is left is the transport's own ceiling, e.g. at 512² with a 30 fps camera:

    python benchmarks/webcam_latency.py --pass-through --size 512 --stream-every 0.033 --transport webrtc

Needs /usr/bin/chromium and the playwright package.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # ui_helpers; livediff is the installed one

BITS, CELL = 12, 8  # the frame number: 12 black/white 8x8 cells, after a white and a black marker cell
MARKS = (255, 0)
TRANSPORTS = ("webrtc", "gradio")

RECORDER = """
window.__captures = []; window.__shown = []; window.__presented = 0;  // shown: [time, frame number, pictures so far]
const BITS = %(bits)d, CELL = %(cell)d;
function stampCanvas(ctx, n) {
  const cells = [1, 0];
  for (let b = 0; b < BITS; b++) cells.push((n >> b) & 1);
  cells.forEach((on, i) => { ctx.fillStyle = on ? '#fff' : '#000'; ctx.fillRect(i * CELL, 0, CELL, CELL); });
}
const reader = document.createElement('canvas');
reader.width = (BITS + 2) * CELL; reader.height = CELL;
const readerCtx = reader.getContext('2d', { willReadFrequently: true });
function readStamp(source) {  // only the stamped strip is copied: the page's main thread stays free
  readerCtx.drawImage(source, 0, 0, reader.width, CELL, 0, 0, reader.width, CELL);
  const strip = readerCtx.getImageData(0, CELL / 2, reader.width, 1).data;
  const bright = (i) => strip[(i * CELL + CELL / 2) * 4] > 127;
  if (!bright(0) || bright(1)) return -1;
  let n = 0;
  for (let b = 0; b < BITS; b++) if (bright(b + 2)) n |= (1 << b);
  return n;
}
// the camera: a canvas with a moving picture and its frame number
const camera = document.createElement('canvas');
camera.width = camera.height = %(size)d;
const draw = camera.getContext('2d');
const stream = camera.captureStream(0);
let frame = 0;
setInterval(() => {
  const t = frame / %(fps)f;
  const g = draw.createLinearGradient(0, 0, camera.width, camera.height);
  g.addColorStop(0, `hsl(${(t * 40) %% 360}, 60%%, 45%%)`); g.addColorStop(1, '#224');
  draw.fillStyle = g; draw.fillRect(0, 0, camera.width, camera.height);
  draw.fillStyle = '#eee';
  draw.beginPath();
  draw.arc(camera.width * (0.5 + 0.3 * Math.sin(t)), camera.height * 0.6, camera.width / 8, 0, 2 * Math.PI);
  draw.fill();
  stampCanvas(draw, frame);
  stream.getVideoTracks()[0].requestFrame();
  window.__captures.push(Date.now());
  frame++;
}, 1000 / %(fps)f);
navigator.mediaDevices.getUserMedia = async () => stream;
// Gradio streaming: each new picture of the <img>
document.addEventListener('load', (e) => {
  const img = e.target;
  if (!(img.closest && img.closest('#live-output'))) return;
  window.__presented += 1;
  window.__shown.push([Date.now(), readStamp(img), window.__presented]);
}, true);
// WebRTC: each picture the <video> presents
const watch = () => {
  const video = document.getElementById('webrtc-output');
  if (!video) return setTimeout(watch, 100);
  const onFrame = (now, meta) => {
    // a busy page may skip a callback: `presentedFrames` still counts every picture shown
    if (video.videoWidth) window.__shown.push([Date.now(), readStamp(video), meta.presentedFrames]);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
};
watch();
"""


def stamp(picture: np.ndarray, number: int) -> np.ndarray:
    """Write the marker cells and `number` into the picture's top row of cells."""
    picture = picture.copy()
    cells = [*MARKS, *(255 if number >> bit & 1 else 0 for bit in range(BITS))]
    for i, value in enumerate(cells):
        picture[:CELL, i * CELL:(i + 1) * CELL] = value
    return picture


def read_stamp(picture: np.ndarray) -> int | None:
    """The frame number stamped into a camera frame, read as sent or mirrored (Gradio's camera mirrors)."""
    for view in (picture, picture[:, ::-1]):
        bright = [view[CELL // 2, i * CELL + CELL // 2, :3].mean() > 127 for i in range(BITS + 2)]
        if bright[0] and not bright[1]:
            return sum(1 << b for b in range(BITS) if bright[b + 2])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=TRANSPORTS, default="webrtc")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--stream-mode", default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds ignored at the start")
    parser.add_argument("--stream-every", type=float, default=0.033,
                        help="seconds between camera frames (and Gradio's uploads); default %(default)s")
    parser.add_argument("--pass-through", action="store_true",
                        help="no model: frames come back as they went in (the transport's own ceiling)")
    args = parser.parse_args()
    if args.size < (BITS + 2) * CELL:
        parser.error(f"--size must be at least {(BITS + 2) * CELL} (the frame number is stamped into the picture)")

    from playwright.sync_api import sync_playwright

    from livediff.app.live_metrics import now
    from livediff.app.ui.engine import DEFAULT_STREAM_MODE, Engine
    from livediff.app.ui.webcam_tab import WebcamStream, stream_delay
    from ui_helpers import running_server

    engine = Engine(dict(model=args.model, width=args.size, height=args.size, device=args.device,
                         dtype=args.dtype), stream_mode=args.stream_mode or DEFAULT_STREAM_MODE)
    delay = 0 if args.pass_through else stream_delay(engine.stream_template)
    arrivals: dict[int, float] = {}
    entered: list[int] = []  # frame numbers in the order they reached the handler
    process = WebcamStream.process

    def timed_process(self, session_id, frame, settings):
        number = read_stamp(frame)
        if number is not None:
            arrivals[number] = time.time() * 1000
        entered.append(-1 if number is None else number)
        live = process(self, session_id, frame, settings)
        # the picture holds the frame that entered `delay` calls ago
        source = entered[-1 - delay] if len(entered) > delay else -1
        return replace(live, image=stamp(live.image, source) if source >= 0 else live.image)

    WebcamStream.process = timed_process
    if args.pass_through:
        engine.batcher.run = lambda session_id, pipe, frame: (frame, now())
    fps = 1 / args.stream_every
    with running_server(engine, restart_after_s=30.0, stream_every=args.stream_every) as server, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--use-fake-ui-for-media-stream", "--disable-background-networking", "--disable-gpu"])
        page = browser.new_page()
        page.add_init_script(RECORDER % {"bits": BITS, "cell": CELL, "size": args.size, "fps": fps})
        page.goto(server.url, wait_until="domcontentloaded")
        if args.transport == "webrtc":
            page.locator("#webrtc-start").click()
        else:
            page.locator("#webcam-transport").get_by_text("Gradio streaming", exact=True).click()
            page.get_by_text("Click to Access Webcam").click()
            page.get_by_label("capture photo").click()
        page.wait_for_timeout((args.warmup + args.seconds) * 1000)
        captures, shown = page.evaluate("window.__captures"), page.evaluate("window.__shown")
        meter = page.locator("#webrtc-stats" if args.transport == "webrtc" else "#live-stats").inner_text().strip()
        status = page.locator("#webrtc-status").inner_text() if args.transport == "webrtc" else "-"
        browser.close()
    start = captures[0] + args.warmup * 1000 if captures else 0
    if not any(t >= start for t, _, _ in shown):
        sys.exit(f"no restyled picture was displayed after the warm-up (page status: {status})")
    window = [(t, n, presented) for t, n, presented in shown if t >= start]
    first_shown: dict[int, float] = {}
    for t, n, _ in window:
        first_shown.setdefault(n, t)  # a repeated presentation of the same picture is not a new picture
    latencies = [t - captures[n] for n, t in first_shown.items() if 0 <= n < len(captures)]
    uplink = [arrivals[n] - captures[n] for n in first_shown if n in arrivals and n < len(captures)]
    downlink = [t - arrivals[n] for n, t in first_shown.items() if n in arrivals]
    (t0, _, k0), (t1, _, k1) = window[0], window[-1]
    shown_fps = (k1 - k0) / ((t1 - t0) / 1000) if t1 > t0 else 0.0
    what = f"pass-through (no model) {args.size}x{args.size}" if args.pass_through else engine.description
    print(f"{args.transport}: {what}, {args.seconds:.0f} s after {args.warmup:.0f} s warm-up, stream delay {delay}, "
          f"camera {fps:.0f} fps")
    print(f"{'displayed fps':34s} {shown_fps:8.1f}")
    if len(latencies) >= 2:
        q = statistics.quantiles(latencies, n=20)
        print(f"{'capture→display p50 / p95 (ms)':34s} {statistics.median(latencies):8.0f} / {q[-1]:.0f}")
        print(f"{'  capture→server median (ms)':34s} {statistics.median(uplink):8.0f}")
        print(f"{'  server→display median (ms)':34s} {statistics.median(downlink):8.0f}")
    print(f"{'camera frames captured':34s} {sum(t >= start for t in captures):8d}")
    print(f"{'frames processed':34s} {sum(t >= start for t in arrivals.values()):8d}")
    print(f"{'restyled pictures displayed':34s} {k1 - k0 + 1:8d}")
    print(f"{'  of them timed (read the number)':34s} {len(first_shown):8d}")
    print(f"{'unreadable pictures':34s} {sum(n < 0 for _, n, _ in window):8d}")
    print(f"{'page meter (server side)':34s} {meter.splitlines()[-1] if meter else '-'}")


if __name__ == "__main__":
    main()
