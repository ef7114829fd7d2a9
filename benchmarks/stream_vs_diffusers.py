"""Throughput of our stream pipeline against diffusers' img2img doing the same denoising work.

Both run the same model, device, frames, timesteps and text embeddings (diffusers is given
precomputed embeddings so it is not charged for text encoding). diffusers denoises every frame
with all n steps, n UNet calls per frame (with CFG each call has doubled rows); our stream batch
makes one call per frame carrying all n stages.

    python benchmarks/stream_vs_diffusers.py                       # CPU: sd-turbo-reduced, 256²
    python benchmarks/stream_vs_diffusers.py --preset sd-turbo-random --size 512 --device cuda
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, moving_frames, publish, time_calls  # noqa: E402
from livediff.pipelines import load_pipeline  # noqa: E402


def diffusers_runner(pipe, guidance_scale: float):
    from diffusers import AutoPipelineForImage2Image, LCMScheduler, StableDiffusionPipeline

    m = pipe.models
    base = StableDiffusionPipeline(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet,
                                   scheduler=LCMScheduler.from_config(m.scheduler.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    img2img = AutoPipelineForImage2Image.from_pipe(base)
    img2img.set_progress_bar_config(disable=True)
    timesteps = [int(t) for t in pipe.schedule.timesteps]
    embeds = dict(prompt_embeds=pipe.guidance.cond.text, negative_prompt_embeds=pipe.guidance.uncond.text)

    def run(frame: np.ndarray):
        image = torch.from_numpy(frame).permute(2, 0, 1).unsqueeze(0).float().div(255).to(pipe.device, pipe.dtype)
        return img2img(image=image, strength=1.0, timesteps=timesteps, guidance_scale=guidance_scale,
                       output_type="np", **embeds).images[0]

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd-turbo-reduced")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--t-index-list", default="32,45")
    parser.add_argument("--guidance-scale", type=float, default=1.5)
    parser.add_argument("--frames", type=int, default=10, help="timed frames (after 3 warm-up frames)")
    parser.add_argument("--vae", default=None, help="e.g. taesd-random")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 keeps timings stable on a machine shared with other work)")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    t_index = [int(i) for i in args.t_index_list.split(",")]
    frames = moving_frames(args.frames + 3, args.size, args.size)
    torch.set_grad_enabled(False)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()

    results = {}
    for cfg_type in ("none", "full", "self", "initialize"):
        pipe = load_pipeline(model=args.preset, t_index_list=t_index, cfg_type=cfg_type, width=args.size,
                             height=args.size, device=args.device, dtype=dtype, vae=args.vae)
        pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=args.guidance_scale)
        results[cfg_type] = time_calls(pipe, frames, args.device)
    baseline_plain = time_calls(diffusers_runner(pipe, 1.0), frames, args.device)
    baseline_cfg = time_calls(diffusers_runner(pipe, args.guidance_scale), frames, args.device)

    rows = [["diffusers img2img, no CFG", baseline_plain.fps, baseline_plain.median_ms, 1.0, "-"],
            ["diffusers img2img, CFG", baseline_cfg.fps, baseline_cfg.median_ms, "-", 1.0]]
    for cfg_type, timing in results.items():
        rows.append([f"livediff stream, cfg={cfg_type}", timing.fps, timing.median_ms,
                     timing.fps / baseline_plain.fps, timing.fps / baseline_cfg.fps])
    title = (f"{args.preset}, {args.size}x{args.size}, {args.device} {dtype}, t_index_list={t_index}, "
             f"guidance {args.guidance_scale}, {args.frames} timed frames, torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads")
    table = markdown_table(["pipeline", "fps", "median ms", "× diffusers no-CFG", "× diffusers CFG"], rows)
    publish(title, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
