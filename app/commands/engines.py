"""`livediff build-engines` and `livediff engines list|clear`: the ONNX graph / TensorRT engine cache.

Building ahead of time matters for TensorRT (minutes per engine); a pipeline started later with
the same settings finds the engines by their key and starts in seconds. Heavy modules are imported
inside the handlers so `livediff --help` stays fast.

Mode causal-video builds its one network, the causal transformer's one-chunk call, by building the
pipeline itself: the engine key then cannot drift from the one `load_pipeline` looks up (text length,
VAE scale and cache size all come from the loaded models and the `causal` options).
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable

from livediff.accelerators import registry

#: `accelerators.engine_cache.KINDS`, written out: that module imports torch, and --help must not
CACHE_KINDS = ("onnx", "tensorrt", "openvino")
from livediff.app.commands.options import add_causal_options, add_pipeline_options

#: the --accelerator of build-engines when none is given
DEFAULT_BUILD_ACCELERATOR = "tensorrt"


def build_accelerators() -> list[str]:
    """The backends whose graphs or engines can be built ahead of time (`BackendSpec.builds_ahead`),
    the default first."""
    builders = [spec.name for spec in registry.specs() if spec.builds_ahead]
    return sorted(builders, key=lambda name: name != DEFAULT_BUILD_ACCELERATOR)


def register(subparsers) -> None:
    build = subparsers.add_parser(
        "build-engines", help="export ONNX graphs and build TensorRT engines ahead of time",
        description="Export the pipeline's networks to ONNX and (with --accelerator tensorrt) build TensorRT "
                    "engines or (with --accelerator openvino) convert them to OpenVINO models for exactly these "
                    "settings: model and LoRAs, resolution (or --min/--max range), "
                    "steps, CFG mode and frame buffer size (they fix the batch rows); with --mode causal-video, "
                    "the causal transformer for the resolution and the chunk/sink/window options. Results are "
                    "cached by a key of all of them; existing valid entries are reused. --accelerator: "
                    f"{' or '.join(build_accelerators())} (default {DEFAULT_BUILD_ACCELERATOR}).")
    add_pipeline_options(build)
    add_causal_options(build)
    build.set_defaults(accelerator=DEFAULT_BUILD_ACCELERATOR)
    group = build.add_argument_group("engines")
    group.add_argument("--mode", choices=("img2img", "txt2img", "video", "causal-video"), default="img2img",
                       help="video also builds the UNet with the feature bank (default bank settings) as a graph; "
                            "causal-video builds the causal transformer only (static resolution, one stream)")
    for bound in ("min", "max"):
        for side in ("width", "height"):
            group.add_argument(f"--{bound}-{side}", type=int, default=None,
                               help=f"{bound}imum {side} of a dynamic-resolution engine (default: --{side})")
    group.add_argument("--cache-dir", default=None, help="engine cache folder (default $LIVEDIFF_CACHE_DIR or "
                                                         "~/.cache/livediff/engines)")
    group.add_argument("--opset", type=int, default=18, help="ONNX opset, 17..23 (default %(default)s)")
    group.add_argument("--workspace-gb", type=float, default=None, help="TensorRT builder workspace limit")
    group.add_argument("--max-sessions", type=int, default=1,
                       help="live sessions one network run may carry (the UI's --max-batch; default %(default)s)")
    build.set_defaults(func=run_build)

    engines = subparsers.add_parser("engines", help="list or clear cached ONNX graphs and TensorRT engines")
    actions = engines.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show every cache entry with its key and state")
    listing.add_argument("--verify", action="store_true", help="also check every file's sha256 (slow for big files)")
    clear = actions.add_parser("clear", help="remove cache entries")
    clear.add_argument("--kind", choices=CACHE_KINDS, default=None, help="only this kind (default: all)")
    for sub in (listing, clear):
        sub.add_argument("--cache-dir", default=None, help="engine cache folder")
    listing.set_defaults(func=run_list)
    clear.set_defaults(func=run_clear)


def _resolution(args: argparse.Namespace):
    bounds = (args.min_height, args.min_width, args.max_height, args.max_width)
    if all(b is None for b in bounds):
        return None
    defaults = (args.height, args.width, args.height, args.width)
    return tuple(d if b is None else b for b, d in zip(bounds, defaults))


class _ProgressDisplay:
    """One progress line per network, fed by the backends' `progress(network, message, done, total)`."""

    def __init__(self, progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, network: str, message: str, done: int, total: int | None) -> None:
        if network not in self.tasks:
            self.tasks[network] = self.progress.add_task(network, total=None)
        self.progress.update(self.tasks[network], description=f"{network}: {message}", completed=done, total=total)


def run_build(args: argparse.Namespace) -> int:
    from livediff.app.commands.options import causal_settings, pipeline_settings
    from livediff.errors import ConfigError

    builders = build_accelerators()
    if args.accelerator not in builders:
        raise ConfigError(f"build-engines --accelerator {args.accelerator!r} builds nothing; use "
                          f"{' or '.join(builders)}")
    settings = pipeline_settings(args, args.mode)
    settings.update(causal_settings(args, args.mode))  # refuses the causal options in the image modes
    build = _build_causal if args.mode == "causal-video" else _build_image
    for name, path in build(args, settings).items():
        print(f"{name}: {path}")
    return 0


def _with_progress(build: Callable[[_ProgressDisplay], dict[str, Path]]) -> dict[str, Path]:
    """Run `build(progress)` under one rich progress line per network (both modes show builds alike)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        return build(_ProgressDisplay(progress))


def _build_image(args: argparse.Namespace, settings: dict) -> dict[str, Path]:
    """The image modes' networks (UNet or banked UNet, VAE parts), checked before any weights load."""
    from livediff.accelerators import check_accelerator, make_backend
    from livediff.networks import stream_networks
    from livediff.pipelines import StreamConfig, shared_models
    from livediff.pipelines.runners import build_target

    accelerator_options = settings.pop("accelerator_options", {})
    config = StreamConfig(**settings, max_sessions=args.max_sessions)
    target = build_target(config)
    options = check_accelerator(config.accelerator, target,
                                dict(cache_dir=args.cache_dir, resolution=_resolution(args), opset=args.opset,
                                     workspace_gb=args.workspace_gb, **accelerator_options))
    models = shared_models(config.model, config.vae, config.loras, config.device, config.dtype,
                           config.control_networks(), config.adapter_networks())
    functions = stream_networks(models)
    if config.mode == "video":  # video mode calls the banked UNet only
        del functions["unet"]
        functions["banked_unet"] = _banked_function(config)

    def build(progress: _ProgressDisplay) -> dict[str, Path]:
        backend = make_backend(config.accelerator, target, options, progress)
        return {name: backend.artifact(function) for name, function in functions.items()}

    return _with_progress(build)


def _build_causal(args: argparse.Namespace, settings: dict) -> dict[str, Path]:
    """The causal transformer, built by loading the causal pipeline (its options are checked before any
    weights load), so the artifact is the very one a later `load_pipeline` with these settings finds."""
    from livediff.errors import ConfigError
    from livediff.pipelines import load_pipeline

    if _resolution(args) is not None:
        raise ConfigError("--min/--max-width/height do not apply to --mode causal-video: its transformer graph "
                          "has the static --width x --height (the cache size follows from it)")
    if args.max_sessions != 1:
        raise ConfigError("--max-sessions does not apply to --mode causal-video: a causal stream runs alone, "
                          "one row per call")
    options = dict(cache_dir=args.cache_dir, opset=args.opset, workspace_gb=args.workspace_gb,
                   **settings.pop("accelerator_options", {}))

    def build(progress: _ProgressDisplay) -> dict[str, Path]:
        causal = load_pipeline(**settings, accelerator_options=options, progress=progress).causal
        return {causal.function.name: causal.backend.artifact(causal.function)}

    return _with_progress(build)


def _banked_function(config):
    """The banked UNet of a video pipeline with these settings (its bank layout fixes the graph's shapes)."""
    from dataclasses import asdict

    from livediff.networks import BankedUNetFunction
    from livediff.pipelines import load_pipeline

    settings = {k: v for k, v in asdict(config).items() if k not in ("accelerator", "similarity_filter")}
    pipe = load_pipeline(**settings)
    return BankedUNetFunction(pipe.banked_unet, pipe.models.vae_scale_factor).eval()


def _describe(entry) -> str:
    key = entry.key
    resolution = key.get("resolution") or ()
    size = "?"
    if len(resolution) == 4:
        min_h, min_w, max_h, max_w = resolution
        size = f"{max_w}x{max_h}" if (min_h, min_w) == (max_h, max_w) else f"{min_w}x{min_h}..{max_w}x{max_h}"
    rows = key.get("rows")
    return "  ".join([
        f"{key.get('kind', '?'):<8}", f"{key.get('network', '?'):<12}", f"model={key.get('model', '?')}",
        f"loras={','.join(key.get('loras') or []) or '-'}", f"size={size}",
        f"rows={'-'.join(map(str, rows)) if rows else 'dynamic'}", f"{key.get('precision', '?')}",
        f"{key.get('builder', '?')}", f"{key.get('device') or ''}".strip(),
        f"{entry.size / 1024 ** 2:.1f} MB",
        datetime.fromtimestamp(entry.created).strftime("%Y-%m-%d %H:%M") if entry.created else "",
    ])


def run_list(args: argparse.Namespace) -> int:
    from livediff.accelerators.base import AcceleratorOptions
    from livediff.accelerators.engine_cache import EngineCache

    cache = EngineCache(AcceleratorOptions(cache_dir=args.cache_dir).cache_dir)
    entries = cache.entries()
    if not entries:
        print(f"no cached graphs or engines in {cache.root}")
        return 0
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} in {cache.root}")
    for entry in entries:
        problem = cache.verify(entry, hash_files=args.verify)
        state = f"UNUSABLE: {problem}" if problem else ("ok (verified)" if args.verify else "ok")
        print(f"{entry.path.name}  {state}\n    {_describe(entry)}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from livediff.accelerators.base import AcceleratorOptions
    from livediff.accelerators.engine_cache import EngineCache

    cache = EngineCache(AcceleratorOptions(cache_dir=args.cache_dir).cache_dir)
    removed = cache.clear(args.kind)
    what = f"{args.kind} entries" if args.kind else "entries"
    print(f"removed {removed} {what} from {cache.root}", file=sys.stdout)
    return 0
