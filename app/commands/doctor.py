"""`livediff doctor`: check this machine and measure every backend here (see `app.doctor`)."""
from __future__ import annotations

import argparse
import json
import sys

from livediff.accelerators import registry
from livediff.app.threads import add_threads_option


def _backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in registry.names()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--backends {text!r}: choose from {', '.join(registry.names())}")
    return names


def _defaults(device: str) -> str:
    """The backends `livediff doctor` measures on this kind of device when none are named (`BackendSpec.doctor`)."""
    return ", ".join(spec.name + (f" (when {spec.doctor_if_installed} is installed)" if spec.doctor_if_installed
                                  else "") for spec in registry.specs() if device in spec.doctor)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check this machine and measure each backend (run this first on a GPU)",
        description="List the device and versions, run a short stream on every backend available here "
                    "(a random-weight preset with SD-Turbo's or SDXL-Turbo's layout at 512² on CUDA, tiny or "
                    "tiny-sdxl on CPU), compare each "
                    "with eager and print fps, latency, error and a verdict per backend.")
    parser.add_argument("--backends", type=_backends, default=None, metavar="A,B",
                        help=f"backends to try, of {', '.join(registry.names())} (default: {_defaults('cuda')} "
                             f"on CUDA; {_defaults('cpu')} on CPU, where compiling takes minutes)")
    parser.add_argument("--family", choices=("sd", "sdxl"), default="sd",
                        help="model layout to measure: sd (SD-Turbo) or sdxl (SDXL-Turbo); default %(default)s")
    parser.add_argument("--controlnets", type=int, default=0, metavar="N",
                        help="measure the stream with N random-weight ControlNets (0..4; default 0)")
    parser.add_argument("--ip-adapter", action="store_true",
                        help="measure the stream with a random-weight IP-Adapter and a style image set")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per backend (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_threads_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from livediff.app import doctor
    from livediff.errors import ConfigError

    if not 1 <= args.frames <= 1000:
        raise ConfigError(f"--frames {args.frames} is outside 1..1000")
    if not 0 <= args.controlnets <= 4:
        raise ConfigError(f"--controlnets {args.controlnets} is outside 0..4")
    report = doctor.run(args.backends, frames=args.frames, progress=lambda text: print(text, file=sys.stderr),
                        family=args.family, controlnets=args.controlnets, ip_adapter=args.ip_adapter)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0 if all(not b.verdict.startswith("failed") for b in report.backends) else 1
