"""Cost per frame of the SD-Turbo (SD 2.1) and SDXL-Turbo layouts on the same stream work.

Measured: both reduced presets (quarter width, same depth and attention layout as the real models)
run the same img2img stream (2 steps, `self` CFG, same frames), interleaved frame by frame in one
process, on this machine; the table gives ms per frame and the ratio.

Counted: the UNet's floating-point operations per stream call (one row per stage), for the reduced
presets at the measured size and for the full-size presets (`sd-turbo-random`,
`sdxl-turbo-random`) at 512², counted by PyTorch's FLOP counter on the `meta` device (no weights
allocated). On a GPU where the UNet is compute-bound the frame cost follows that ratio; run
`livediff doctor --family sdxl` there for the measured figure.

    python benchmarks/model_families.py                      # CPU: reduced presets, 256², 1 thread
    python benchmarks/model_families.py --size 512 --threads 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import time_interleaved, unet_gflops  # noqa: E402
from livediff.pipelines import load_pipeline  # noqa: E402

FAMILIES = {"SD-Turbo (SD 2.1)": ("sd-turbo-reduced", "sd-turbo-random"),
            "SDXL-Turbo": ("sdxl-turbo-reduced", "sdxl-turbo-random")}


def preset_gflops(preset: str, size: int, steps: list[int]) -> float:
    return unet_gflops(load_pipeline(model=preset, width=size, height=size, device="meta", dtype="float16",
                                     t_index_list=steps))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=12, help="timed frames per family (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = [32, 45]
    pipes = {}
    for family, (reduced, _) in FAMILIES.items():
        pipe = load_pipeline(model=reduced, vae="taesd-random", t_index_list=steps, cfg_type="self",
                             width=args.size, height=args.size, device="cpu", dtype="float32", seed=1)
        pipe.prepare(prompt="a photo of a city street", guidance_scale=1.2)
        pipes[family] = pipe
    generator = torch.Generator().manual_seed(0)
    frames = [torch.rand(1, 3, args.size, args.size, generator=generator) for _ in range(args.warmup + args.frames)]
    timings = time_interleaved({family: (lambda frame, pipe=pipe: pipe(frame, output="tensor"))
                                for family, pipe in pipes.items()}, frames, "cpu", args.warmup)
    base = next(iter(timings.values())).median_ms
    print(f"img2img, {len(steps)} steps, self CFG, TAESD layout, {args.size}², CPU, {args.threads} thread(s), "
          f"{args.frames} frames each, interleaved\n")
    print(f"| layout | reduced preset ms/frame (measured) | × SD-Turbo | UNet GFLOP/call, reduced {args.size}² "
          f"(counted) | UNet GFLOP/call, full size 512² (counted) | × SD-Turbo |")
    print("|---|---|---|---|---|---|")
    full_base = None
    for family, (reduced, full) in FAMILIES.items():
        median = timings[family].median_ms
        full_flops = preset_gflops(full, 512, steps)
        full_base = full_base or full_flops
        print(f"| {family} | {median:.0f} | {median / base:.2f} | "
              f"{preset_gflops(reduced, args.size, steps):.0f} | {full_flops:.0f} | {full_flops / full_base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
