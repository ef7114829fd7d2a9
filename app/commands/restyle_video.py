"""`livediff video IN... -o OUT`: restyle whole video files (one, several, or folders)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from livediff.app.commands.options import (add_causal_options, add_pipeline_options, add_video_options,
                                           causal_settings, pipeline_settings, style_image, video_settings)
from livediff.errors import LivediffError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "video", help="restyle video files (one file, several, or a folder)",
        description="Restyle video files with the streaming video-to-video pipeline. fps, timestamps and the "
                    "audio track are kept. Without --width/--height the model size follows the first input's "
                    "aspect ratio (longest side 512), so outputs keep the input size; with an explicit size of "
                    "another aspect, the largest centred region of that aspect is processed and written.")
    parser.add_argument("inputs", nargs="+", help="video files and/or folders of videos")
    parser.add_argument("-o", "--output", required=True, help="output file (one input) or folder (several)")
    add_pipeline_options(parser)
    parser.set_defaults(width=None, height=None)
    parser.add_argument("--mode", choices=("video", "img2img", "causal-video"), default="video",
                        help="video: with the feature bank for temporal consistency (default); img2img: per frame; "
                             "causal-video (preview): a causal Wan video transformer chunk by chunk with a rolling "
                             "K/V cache (--model tiny-wan-causal or a Wan diffusers folder/hub id; no guidance: "
                             "--guidance-scale, --delta and --cfg-type are not used)")
    add_video_options(parser)
    add_causal_options(parser)
    job = parser.add_argument_group("encoding and job")
    job.add_argument("--codec", default=None, help="video codec (default libx264)")
    job.add_argument("--quality", default=None,
                     help="x264 CRF as an integer (lower is better, default 20) or a bitrate like 4M")
    job.add_argument("--audio", choices=("auto", "copy", "aac", "none"), default="auto",
                     help="the input's audio: auto (default) copies it where the output container takes it, else "
                          "transcodes to AAC; copy, aac or none force one of those")
    job.add_argument("--resize", choices=("crop", "stretch"), default="crop",
                     help="frames of another aspect than the model size: crop (default) a centred region, or "
                          "stretch the whole frame")
    job.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from its finished segments (same settings required); "
                          "finished outputs are kept")
    job.add_argument("--overwrite", action="store_true",
                     help="replace existing outputs, each only once its new version is finished")
    job.add_argument("--workers", type=int, default=1, help="process files in parallel on Ray (livediff[ray])")
    job.add_argument("--ray-address", default=None, help="join an existing Ray cluster instead of a local one")
    job.add_argument("--metrics", action="store_true",
                     help="write temporal metrics JSON (warp error, consistency, fps) next to each output")
    job.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _quality(text: str | None):
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _working_size(args: argparse.Namespace) -> None:
    """Fill in the sides of the model size the user did not give from the first input's aspect."""
    from livediff.app.video.batch import plan_outputs
    from livediff.app.video.geometry import complete_size, size_multiple
    from livediff.app.video.reader import VideoReader

    if args.width and args.height:
        return
    first, _ = plan_outputs(args.inputs, args.output)[0]
    try:
        reader = VideoReader(first)
    except LivediffError:  # an unreadable first file is reported by the job itself
        args.width, args.height = args.width or 512, args.height or 512
        return
    given = args.width or args.height
    args.width, args.height = complete_size(args.width, args.height, reader.width, reader.height,
                                            size_multiple(args.mode))
    if given:
        print(f"livediff: model size {args.width}x{args.height} (the other side follows {first}'s "
              f"{reader.width}x{reader.height} aspect)")


def run(args: argparse.Namespace) -> int:
    from livediff.app.video.batch import process_many
    from livediff.app.video.job import Terminated
    from livediff.app.video.options import JobOptions
    from livediff.app.video.processor import PipelineFactory

    _working_size(args)
    style_image(args)  # an unreadable style picture is named before any model loads
    settings = {**pipeline_settings(args, args.mode), **(video_settings(args) if args.mode == "video" else {})}
    prompt = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, guidance_scale=args.guidance_scale,
                  delta=args.delta)
    settings.update(causal_settings(args, args.mode))
    if args.mode == "causal-video":
        prompt = dict(prompt=args.prompt, negative_prompt=args.negative_prompt)  # distilled: no guidance
    factory = PipelineFactory(settings=settings, prompt=prompt, strength=args.strength, style_image=args.style_image,
                              max_pixels=args.max_pixels)
    options = JobOptions(codec=args.codec, quality=_quality(args.quality), audio=args.audio, resize=args.resize,
                         resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    try:
        results = process_many(args.inputs, args.output, factory, options, workers=args.workers,
                               ray_address=args.ray_address)
    except KeyboardInterrupt as stop:  # the job has said what it kept and how to continue
        return 143 if isinstance(stop, Terminated) else 130
    if args.metrics:
        _write_metrics(results)
    return results.exit_code


def _write_metrics(results) -> None:
    from livediff.app.eval.metrics import evaluate_videos

    for result in results:
        if not result.ok or result.status == "skipped":
            continue
        metrics = evaluate_videos(result.input_path, result.output_path, elapsed_seconds=result.seconds or None,
                                  region=result.region)
        path = Path(result.output_path).with_suffix(".metrics.json")
        path.write_text(json.dumps(metrics.to_dict(), indent=2))
        print(metrics.format_table())
        print(f"metrics: {path}")
