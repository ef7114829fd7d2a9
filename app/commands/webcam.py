"""`livediff webcam`: a local camera through the streaming pipeline, into a window or a video file.

The camera is read on its own thread into a one-frame slot (`app.camera`), so the model always
gets the newest frame and stale ones are dropped, never queued; fps, latency and the number of
dropped frames are shown on the window and printed. Without a display (or with an OpenCV build
that has no window support) and no `--output`, the command stops with an error that says so
before loading the model.

With `--stream-mode causal-video` the pipeline returns frames a chunk at a time; they are shown in
order at the camera's pace, one per captured frame, a chunk's worth of frames late
(`app.ui.causal_live.ChunkPacer`), and the delay is printed and drawn with the meter. When the stream
ends because the camera does (a file played `--once` ends, a camera stops delivering) or on Ctrl-C, the
last, incomplete chunk is flushed and its frames written and shown too: they were seen, and only the
chunking held them back (a Ctrl-C that lands while a chunk is being computed loses that chunk: the
pipeline had already taken its frames). `--max-frames`, `--seconds` and q/Esc stop where asked, without
the flush.
"""
from __future__ import annotations

import argparse
import os
import sys

from livediff.app.commands.options import add_causal_options, add_pipeline_options, build_pipeline

WINDOW = "livediff webcam (q to quit)"
CAMERA_TIMEOUT_S = 10.0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "webcam", help="restyle a local camera live (window or video file)",
        description="Restyle a local camera live. Frames are centre-cropped to the model's aspect and "
                    "resized to --width x --height. Shows fps and latency; q or Esc closes the window.")
    parser.add_argument("--camera", default="0", metavar="INDEX|FILE|URL",
                        help="camera index (default 0), or a video file / stream URL played as if live")
    parser.add_argument("-o", "--output", default=None, metavar="OUT.mp4",
                        help="write the restyled stream to this file (real-time timestamps) instead of a window")
    parser.add_argument("--window", action="store_true",
                        help="with --output, also show the window")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N restyled frames")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--once", action="store_true",
                        help="play a video file used as --camera once instead of looping it like a live camera")
    parser.add_argument("--stream-mode", default=None,
                        help="pipeline mode: video (feature bank, default when available), img2img, or "
                             "causal-video (preview: a causal Wan video model, e.g. --model tiny-wan-causal; frames "
                             "come a chunk at a time, shown one per captured frame 4k-1 frames late; no guidance)")
    add_pipeline_options(parser)
    add_causal_options(parser)
    parser.set_defaults(func=run)


def window_support_problem() -> str | None:
    """Why no OpenCV window can be opened here, or None if one can."""
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no display (DISPLAY / WAYLAND_DISPLAY are not set)"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        return "this OpenCV build has no window support (opencv-python-headless; install opencv-python for windows)"
    return None


def _check(args: argparse.Namespace) -> bool:
    """Validate before the model loads; returns whether a window is shown."""
    from livediff.errors import ConfigError

    if args.max_frames is not None and args.max_frames < 1:
        raise ConfigError(f"--max-frames {args.max_frames} must be >= 1")
    if args.seconds is not None and not args.seconds > 0:
        raise ConfigError(f"--seconds {args.seconds} must be > 0")
    if args.frame_buffer_size != 1:
        raise ConfigError(f"--frame-buffer-size {args.frame_buffer_size}: a live camera is streamed one frame per call")
    show = args.output is None or args.window
    if show:  # first: it needs no model code, so a machine without a display hears it at once
        problem = window_support_problem()
        if problem:
            raise ConfigError(f"cannot open a window: {problem}; use --output out.mp4 to record instead")
    from livediff.app.commands.options import causal_settings
    from livediff.app.ui.engine import DEFAULT_STREAM_MODE

    causal_settings(args, args.stream_mode or DEFAULT_STREAM_MODE, "--stream-mode")  # a misplaced option, named now
    return show


def _build_pipeline(args: argparse.Namespace):
    from livediff.app.ui.engine import DEFAULT_STREAM_MODE

    return build_pipeline(args, args.stream_mode or DEFAULT_STREAM_MODE)


class _Recorder:
    """Writes delivered frames with millisecond timestamps from the wall clock (first frame at 0),
    so the file plays back at the speed the stream was seen, dropped frames and all."""

    def __init__(self, path: str, width: int, height: int):
        from fractions import Fraction

        from livediff.app.video.writer import VideoWriter

        self.writer = VideoWriter(path, width=width, height=height, fps=30, time_base=Fraction(1, 1000))
        self._origin: float | None = None
        self._last_pts = -1

    def write(self, picture, delivered: float) -> None:
        if self._origin is None:
            self._origin = delivered
        pts = max(round((delivered - self._origin) * 1000), self._last_pts + 1)
        self.writer.write(picture, pts=pts)
        self._last_pts = pts

    def close(self) -> None:
        self.writer.close()


def run(args: argparse.Namespace) -> int:
    show = _check(args)
    from livediff.app.camera import CameraReader, parse_source
    from livediff.app.live_metrics import LiveMeter, now
    from livediff.app.ui.causal_live import ChunkPacer, chunk_delay, delay_text, is_chunked, nonfinite_count
    from livediff.app.ui.frames import fit_frame
    from livediff.app.ui.webcam_tab import stream_delay
    from livediff.errors import InputError

    camera = CameraReader(parse_source(args.camera), loop=not args.once)
    print(f"livediff webcam: loading {args.model} ...", file=sys.stderr)
    pipe = _build_pipeline(args)
    # a chunked pipeline: the pacer hands out one frame per captured frame and the meter is told each
    # shown frame's own capture time, so its stream delay is 0 here
    pacer = ChunkPacer(chunk_delay(pipe)) if is_chunked(pipe) else None
    delay = f" · {delay_text(pipe)}" if pacer else ""
    if pacer:
        print(f"livediff webcam: {delay_text(pipe)}", file=sys.stderr)
    meter = LiveMeter(delay_frames=0 if pacer else stream_delay(pipe), count_drops=True)
    meter.watch_nonfinite(nonfinite_count(pipe))
    recorder = _Recorder(args.output, args.width, args.height) if args.output else None
    camera.start()
    started_at, state, interrupted = now(), {"last_print": 0.0, "previous": None}, False

    def deliver(picture, arrived: float, begun: float) -> bool:
        """Record, write and show one picture; False when the stream should stop."""
        delivered = now()
        meter.record(arrived, begun, delivered, advanced=picture is not state["previous"])
        meter.set_dropped(camera.slot.dropped)
        state["previous"], reading = picture, meter.reading()
        text = reading.format() + delay
        if recorder is not None:
            recorder.write(picture, delivered)
        if show and not _show(picture, text):
            return False
        if delivered - state["last_print"] > 1.0:
            print(f"\r{text}    ", end="", file=sys.stderr, flush=True)
            state["last_print"] = delivered
        return not ((args.max_frames and reading.frames >= args.max_frames) or
                    (args.seconds and delivered - started_at >= args.seconds))

    def finish_chunk() -> None:
        """The last, incomplete chunk: the frames the pipeline collected and those the pacer still holds."""
        begun = now()
        for picture, arrived in pacer.drain(pipe.flush()):
            if not deliver(picture, arrived, begun):
                break

    # the source ending (or stalling) and Ctrl-C end the stream with its last chunk; a frame or time limit
    # and q/Esc stop it where asked
    flush_at_end, stalled = pacer is not None, False
    try:
        try:
            while True:
                grabbed = camera.slot.take(timeout=CAMERA_TIMEOUT_S)
                if grabbed is None:
                    stalled = not camera.slot.closed
                    break
                begun = now()
                frame = fit_frame(grabbed.rgb, args.width, args.height)
                if pacer:
                    shown = pacer.push(grabbed.at, pipe(frame))
                    if shown is None:  # the first chunk is still filling
                        continue
                    picture, arrived = shown
                else:
                    picture, arrived = pipe(frame), grabbed.at
                if not deliver(picture, arrived, begun):
                    flush_at_end = False
                    break
        except KeyboardInterrupt:
            interrupted = True  # Ctrl-C is how a live session ends: what was recorded is kept and reported
            if flush_at_end:
                print("\nlivediff webcam: Ctrl-C: finishing the last, incomplete chunk (Ctrl-C again to drop it)",
                      file=sys.stderr)
        if flush_at_end:
            try:
                finish_chunk()
            except KeyboardInterrupt:  # a second Ctrl-C: the frames still in the pipeline are dropped
                interrupted = True
    finally:
        camera.stop()
        if recorder is not None:
            recorder.close()
        if show:
            import cv2

            cv2.destroyAllWindows()
    if stalled:
        raise InputError(f"camera {args.camera} delivered no frame for {CAMERA_TIMEOUT_S:.0f} s")
    reading = meter.reading()
    how = "stopped by Ctrl-C after " if interrupted else ""
    print(f"\rlivediff webcam: {how}{reading.frames} frames; last {meter.window_s:.0f} s: {reading.format()}{delay}",
          file=sys.stderr)
    if recorder is not None:
        if reading.frames == 0:
            raise InputError(f"camera {args.camera} delivered no frame; {args.output} holds no video")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _show(picture, text: str) -> bool:
    """Draw the frame with the meter; False when the person pressed q or Esc."""
    import cv2

    bgr = cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)
    cv2.putText(bgr, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(bgr, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imshow(WINDOW, bgr)
    return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
