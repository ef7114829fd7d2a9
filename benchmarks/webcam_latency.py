"""Glass-to-glass numbers of the browser webcam path: a real headless Chromium with a fake camera
streams into the UI server for a while; the page records when each camera frame is captured and
when each restyled frame is displayed, the server records when each frame reaches the handler.

    python benchmarks/webcam_latency.py --model tiny --size 128 --seconds 20

Reported, side by side with the page's own meter (server-side, see app/live_metrics.py):
* displayed fps: restyled frames shown per second, counted in the page;
* capture→display latency: display time of a picture − capture time of the camera frame in it
  (the frame that reached the handler `stream delay` calls earlier: the newest capture before it
  arrived). Same machine, so browser and server share the wall clock.
* frames captured vs processed: the difference is what was dropped as stale.

`--pass-through` takes the model out of the way (each frame comes back as it went in, through the
same server path: session, settings, batcher, JPEG encoding, Gradio's streaming): what is left is
the transport's own ceiling, e.g. at 512² with the camera sent at 30 fps:

    python benchmarks/webcam_latency.py --pass-through --size 512 --stream-every 0.033

Needs /usr/bin/chromium and the playwright package.
"""
from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

BITS, CELL = 12, 8  # the call number, stamped into the output as 12 black/white 8x8 cells (survives JPEG)

RECORDER = """
window.__captures = []; window.__shown = [];
const toDataURL = HTMLCanvasElement.prototype.toDataURL;
HTMLCanvasElement.prototype.toDataURL = function (...args) {
  if (args[0] === 'image/jpeg') window.__captures.push(Date.now());
  return toDataURL.apply(this, args);
};
const reader = document.createElement('canvas');
document.addEventListener('load', (e) => {
  const img = e.target;
  if (!(img.closest && img.closest('#live-output'))) return;
  const at = Date.now();
  reader.width = img.naturalWidth; reader.height = img.naturalHeight;
  const ctx = reader.getContext('2d');
  ctx.drawImage(img, 0, 0);
  let call = 0;
  for (let b = 0; b < %(bits)d; b++) {
    const px = ctx.getImageData(b * %(cell)d + %(cell)d / 2, %(cell)d / 2, 1, 1).data;
    if (px[0] > 127) call |= (1 << b);
  }
  window.__shown.push([at, call]);
}, true);
""" % {"bits": BITS, "cell": CELL}


def stamp(picture, call: int):
    """Write `call` into the picture's top row of cells so the page can tell which call it shows."""
    picture = picture.copy()
    for bit in range(BITS):
        picture[:CELL, bit * CELL:(bit + 1) * CELL] = 255 if call >> bit & 1 else 0
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--stream-mode", default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds ignored at the start")
    parser.add_argument("--stream-every", type=float, default=None, help="seconds between camera frames sent")
    parser.add_argument("--pass-through", action="store_true",
                        help="no model: frames come back as they went in (the transport's own ceiling)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from livediff.app.live_metrics import now
    from livediff.app.ui.engine import DEFAULT_STREAM_MODE, Engine
    from livediff.app.ui.webcam_tab import WebcamStream, stream_delay
    from ui_helpers import running_server

    engine = Engine(dict(model=args.model, width=args.size, height=args.size, device=args.device,
                         dtype=args.dtype), stream_mode=args.stream_mode or DEFAULT_STREAM_MODE)
    arrivals: list[float] = []
    process = WebcamStream.process

    def timed_process(self, session_id, frame, settings):
        arrivals.append(time.time() * 1000)
        live = process(self, session_id, frame, settings)
        return replace(live, image=stamp(live.image, len(arrivals) - 1))

    WebcamStream.process = timed_process
    if args.pass_through:
        engine.batcher.run = lambda session_id, pipe, frame: (frame, now())
    launch = {"stream_every": args.stream_every} if args.stream_every else {}
    with running_server(engine, restart_after_s=30.0, **launch) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            "--disable-background-networking", "--disable-gpu"])
        page = browser.new_page()
        page.add_init_script(RECORDER)
        page.goto(server.url, wait_until="domcontentloaded")
        page.get_by_text("Click to Access Webcam").click()
        page.get_by_label("capture photo").click()
        page.wait_for_timeout((args.warmup + args.seconds) * 1000)
        captures, shown = page.evaluate("window.__captures"), page.evaluate("window.__shown")
        meter = page.locator("#live-stats").inner_text().strip().splitlines()[-1]
        browser.close()
    delay = 0 if args.pass_through else stream_delay(engine.stream_template)
    start = captures[0] + args.warmup * 1000
    latencies, transport = [], []
    for shown_at, call in shown:
        source_call = call - delay
        if shown_at < start or not 0 <= source_call < len(arrivals):
            continue
        index = bisect.bisect_left(captures, arrivals[source_call]) - 1
        if index >= 0:
            latencies.append(shown_at - captures[index])
        if call + 1 < len(arrivals):
            transport.append(shown_at - arrivals[call])
    window = [t for t, _ in shown if t >= start]
    in_window = [t for t in captures if t >= start]
    fps = (len(window) - 1) / ((window[-1] - window[0]) / 1000) if len(window) > 1 else 0.0
    what = f"pass-through (no model) {args.size}x{args.size}" if args.pass_through else engine.description
    print(f"{what}, {args.seconds:.0f} s after {args.warmup:.0f} s warm-up, stream delay {delay}, "
          f"camera frames every {args.stream_every or 'default'} s")
    print(f"{'displayed fps':32s} {fps:8.1f}")
    if latencies:
        q = statistics.quantiles(latencies, n=10)
        print(f"{'capture→display median (ms)':32s} {statistics.median(latencies):8.0f}")
        print(f"{'capture→display p10 / p90 (ms)':32s} {q[0]:8.0f} / {q[-1]:.0f}")
        print(f"{'handler arrival→display med (ms)':32s} {statistics.median(transport):8.0f}")
    print(f"{'camera frames captured':32s} {len(in_window):8d}")
    print(f"{'frames processed':32s} {sum(t >= start for t in arrivals):8d}")
    print(f"{'restyled frames displayed':32s} {len(window):8d}")
    print(f"{'page meter (server side)':32s} {meter}")


if __name__ == "__main__":
    main()
