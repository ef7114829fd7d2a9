"""`livediff ui` (also `python -m livediff.app`): the browser UI on a local port.

The model is loaded before the server starts, so a missing model or a bad option ends the command
with one sentence (exit 2) instead of a page that fails on the first click. A hub id that is not
in the local cache is downloaded on this first start (the loader says so); where it cannot be,
the error says how to get the weights.
"""
from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from dataclasses import replace

from livediff.accelerators import registry
from livediff.app.commands.options import (add_causal_options, add_pipeline_options, causal_settings,
                                           pipeline_settings, style_image)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ui", help="start the browser UI (webcam, image and video tabs)",
        description="Start the Gradio UI: live webcam translation, img2img/txt2img and video files, with "
                    "controls that act live. Every browser tab gets its own stream state; one model is shared.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default %(default)s: this machine only). The server has no "
                             "authentication unless --auth-file is given: with 0.0.0.0 anyone who can reach this "
                             "machine can use the model. WebRTC media uses UDP on this host's addresses")
    parser.add_argument("--auth-file", default=None, metavar="FILE",
                        help="ask for a user name and password (one user:password per line in FILE) before the "
                             "page or its API answers")
    parser.add_argument("--port", type=int, default=7860, help="default %(default)s")
    parser.add_argument("--stream-mode", default=None,
                        help="pipeline of the webcam and video tabs: video (feature bank; default when available), "
                             "img2img, or causal-video (preview: a causal Wan video model, e.g. --model "
                             "tiny-wan-causal; Webcam and Video tabs, live frames shown 4k-1 frames late, no guidance)")
    parser.add_argument("--stream-every", type=float, default=None, metavar="SECONDS",
                        help="interval at which the page sends camera frames (default 0.04); frames sent while "
                             "the model is busy replace each other")
    parser.add_argument("--max-upload-mb", type=float, default=200.0, metavar="MB",
                        help="largest video or image a browser may upload (default %(default)g)")
    parser.add_argument("--cache-age", type=int, default=600, metavar="SECONDS",
                        help="delete the server's cached pictures, uploads and outputs older than this "
                             "(default %(default)s); all of them when it stops")
    parser.add_argument("--idle-timeout", type=float, default=900.0, metavar="SECONDS",
                        help="forget a session's stream state after this long without a request (default %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=4.0, metavar="MS",
                        help="how long a live frame may wait for the other live tabs' frames to join its batch "
                             "(default %(default)g; 0 never waits)")
    parser.add_argument("--max-batch", type=int, default=None, metavar="N",
                        help="most live frames computed together in one batch (default 8; 1 with "
                             f"{' or '.join(s.name for s in registry.specs() if s.fixed_rows)}, "
                             "whose engines are built for this many sessions' rows; 1: one frame per network "
                             "call, first come first served)")
    parser.add_argument("--ice-server", action="append", default=[], metavar="URL",
                        help="a STUN or TURN server for the Webcam tab's WebRTC connections (stun:, turn: or "
                             "turns: URL; repeat for several), needed when the browser cannot reach this "
                             "machine's own addresses (NAT, containers); TURN credentials come from "
                             "LIVEDIFF_TURN_USERNAME and LIVEDIFF_TURN_CREDENTIAL")
    parser.add_argument("--stats", action="store_true",
                        help="print the live batches (sessions, frames/s, frames per batch) and the non-finite "
                             "values the streams zeroed every 5 s; the same "
                             "figures are served at the API endpoint /server_stats")
    add_pipeline_options(parser)
    add_causal_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from livediff.errors import ConfigError
    from livediff.pipelines.choices import MAX_SESSIONS

    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is outside 1..65535")
    if args.stream_every is not None and not 0.005 <= args.stream_every <= 5:
        raise ConfigError(f"--stream-every {args.stream_every} is outside 0.005..5 seconds")
    if not 0 < args.idle_timeout < math.inf:
        raise ConfigError(f"--idle-timeout {args.idle_timeout} must be a positive, finite number of seconds")
    if not 0 < args.max_upload_mb <= 100_000:
        raise ConfigError(f"--max-upload-mb {args.max_upload_mb} is outside (0, 100000]")
    if not 0 <= args.batch_wait_ms <= 1000:
        raise ConfigError(f"--batch-wait-ms {args.batch_wait_ms} is outside 0..1000")
    if args.max_batch is not None and not 1 <= args.max_batch <= MAX_SESSIONS:
        raise ConfigError(f"--max-batch {args.max_batch} is outside 1..{MAX_SESSIONS}")
    if args.cache_age < 4:
        raise ConfigError(f"--cache-age {args.cache_age} must be at least 4 seconds")
    if args.frame_buffer_size != 1:
        raise ConfigError(f"--frame-buffer-size {args.frame_buffer_size}: the UI streams one frame per call")
    from livediff.app.ui.ice import parse_ice_servers

    ice_servers = parse_ice_servers(args.ice_server)
    from livediff.app.ui.auth import read_auth_file

    auth = read_auth_file(args.auth_file) if args.auth_file else None
    check_port_free(args.host, args.port)
    style = style_image(args)  # an unreadable style picture is named before the model loads

    from livediff.app.ui.engine import DEFAULT_STREAM_MODE, Engine
    from livediff.app.ui.server import DEFAULT_STREAM_EVERY, launch
    from livediff.app.ui.sessions import SessionRegistry

    stream_mode = args.stream_mode or DEFAULT_STREAM_MODE
    settings = pipeline_settings(args, "img2img")
    settings.pop("mode")
    settings.update(causal_settings(args, stream_mode, "--stream-mode"))
    print(f"livediff ui: loading {args.model} on {settings['device']} ({settings['dtype']}) ...", file=sys.stderr)
    engine = Engine(settings, stream_mode=stream_mode,
                    batch_wait_s=args.batch_wait_ms / 1000, max_batch=args.max_batch)
    defaults = initial_settings(args, engine, style)
    registry = SessionRegistry(engine, idle_timeout_s=args.idle_timeout, max_pixels=args.max_pixels)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the clean-up below also runs for `kill` and Docker stops
    try:
        demo = launch(registry, host=args.host, port=args.port, defaults=defaults,
                      stream_every=args.stream_every or DEFAULT_STREAM_EVERY, cache_age_s=args.cache_age,
                      max_upload_mb=args.max_upload_mb, ice_servers=ice_servers, auth=auth)
        print(f"livediff ui: {engine.description}; open http://{args.host}:{args.port}", file=sys.stderr)
        if args.stats:
            threading.Thread(target=_print_stats, args=(engine, registry, 5.0), daemon=True).start()
        try:
            demo.block_thread()
        finally:
            demo.close(verbose=False)
    finally:
        registry.shutdown()
    return 0


def initial_settings(args: argparse.Namespace, engine, style=None):
    """The controls' initial values, so every new tab starts from the command line: its prompt,
    guidance, strength and (`--style-image`, read by `options.style_image`) style picture."""
    from livediff.app.ui.settings import LiveSettings

    if engine.stream_mode == "causal-video":  # no guidance (`settings.CAUSAL_REFUSALS`)
        defaults = LiveSettings.for_pipeline(engine.stream_template, prompt=args.prompt)
        return replace(defaults, strength=args.strength) if args.strength is not None else defaults
    defaults = LiveSettings.for_pipeline(engine.stream_template, prompt=args.prompt,
                                         negative_prompt=args.negative_prompt, guidance_scale=args.guidance_scale,
                                         delta=args.delta)
    if args.strength is not None:
        defaults = replace(defaults, strength=args.strength)
    if style is not None:
        defaults = replace(defaults, style_image=style)
    return defaults


def _print_stats(engine, registry, every_s: float) -> None:
    while True:
        time.sleep(every_s)
        print(f"livediff ui: {engine.batcher.stats().format()} · {registry.nonfinite().format()}", file=sys.stderr,
              flush=True)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def check_port_free(host: str, port: int) -> None:
    """Fail before the model loads (which can take minutes) when the address is taken or not this
    machine's, each with its own sentence."""
    import errno
    import socket

    from livediff.errors import ConfigError

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--host {host!r} is neither an IP address nor a name this machine resolves "
                          f"({getattr(exc, 'strerror', None) or exc}); use e.g. 127.0.0.1 or 0.0.0.0") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use ({exc.strerror}); choose another with "
                                  f"--port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--host {host} is not an address of this machine ({exc.strerror}); use one of its "
                                  f"addresses, 127.0.0.1 or 0.0.0.0") from None
            raise ConfigError(f"cannot listen on {host} port {port} ({exc.strerror})") from None
