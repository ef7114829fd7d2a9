"""The `livediff` console script: a thin argparse front over app.commands."""
from __future__ import annotations

import argparse
import logging
import sys

from livediff.app.commands import load_command_modules
from livediff.app.threads import apply_threads
from livediff.errors import LivediffError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livediff",
        description="Real-time streaming image and video-to-video diffusion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs and full tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in load_command_modules():
        module.register(sub)
    _verbose_anywhere(sub)
    return parser


def _verbose_anywhere(subparsers: argparse._SubParsersAction) -> None:
    """`-v` also after the command (`livediff video -v …`); SUPPRESS keeps a `-v` given before it."""
    for command in subparsers.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show debug logs and full tracebacks")
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_anywhere(action)


def _quiet_third_party_logs() -> None:
    """diffusers/transformers warn about things a user cannot act on (optional torchvision, hub retries)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="livediff: %(message)s")
    if not args.verbose:
        _quiet_third_party_logs()
    try:
        if getattr(args, "threads", None) is not None:
            apply_threads(args.threads)
        return int(args.func(args) or 0)
    except LivediffError as exc:
        if args.verbose:
            raise
        print(f"livediff: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("livediff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
