"""`livediff eval SOURCE EDITED`: temporal consistency of an edited video against its source.

Heavy modules (OpenCV, PyAV, numpy) are imported inside `run` so `livediff --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from livediff.app.threads import add_threads_option


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="measure temporal consistency of an edited video against its source",
        description=(
            "Measure how temporally consistent EDITED is, using SOURCE's optical flow: warp error "
            "(edited frame t warped along the source motion vs edited frame t+1, occlusions "
            "masked), frame-to-frame difference of both videos, and throughput when --elapsed "
            "is given. Errors are mean absolute differences on a 0-1 scale."
        ),
    )
    parser.add_argument("source", metavar="SOURCE", help="the input video (e.g. source.mp4)")
    parser.add_argument("edited", metavar="EDITED", help="the restyled video to judge (e.g. edited.mp4)")
    parser.add_argument("--flow", default="dis", metavar="{dis,farneback}",
                        help="optical flow estimator for the source motion (default: dis)")
    parser.add_argument("--max-frames", type=_positive_int, default=None, metavar="N",
                        help="only use the first N frames of each video")
    parser.add_argument("--elapsed", type=_positive_float, default=None, metavar="SECONDS",
                        help="seconds it took to produce EDITED; reported as frames per second")
    parser.add_argument("--json", dest="json_path", default=None, metavar="OUT.json",
                        help="also write the metrics to this JSON file")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="what to print on stdout (default: table)")
    add_threads_option(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from livediff.errors import ConfigError
    from livediff.app.eval.metrics import evaluate_videos

    metrics = evaluate_videos(args.source, args.edited, flow=args.flow,
                              max_frames=args.max_frames, elapsed_seconds=args.elapsed)
    payload = json.dumps(metrics.to_dict(), indent=2, allow_nan=False)
    if args.json_path:
        out = Path(args.json_path)
        try:
            out.write_text(payload + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write --json file {out}: {exc.strerror or exc}") from exc
    if args.format == "json":
        print(payload)
    else:
        print(metrics.format_table())
        if args.json_path:
            print(f"wrote {args.json_path}", file=sys.stderr)
    return 0
