"""What structure and style conditioning cost on the stream: the plain img2img stream against the
same stream with one and with two ControlNets (random weights in the UNet's layout, `canny` and
`tile` preprocessors) and with an IP-Adapter (random weights, a style image set once), interleaved
frame by frame in one process on the same frames.

Measured: ms per frame and the ratio to the plain stream on this machine. Counted: the UNet call's
GFLOPs (PyTorch's FLOP counter), which is what a compute-bound GPU pays; `canny` runs on the host
(OpenCV) and is included in the measured time; the style image is encoded once, before timing, as
in use (once per change, never per frame).

    python benchmarks/conditioning_cost.py                        # CPU: sd-turbo-reduced, 256², 1 thread
    python benchmarks/conditioning_cost.py --preset sd-turbo-random --size 512 --device cuda --dtype float16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import time_interleaved, unet_gflops  # noqa: E402
from livediff.pipelines import load_pipeline  # noqa: E402

#: setup → its `load_pipeline` settings
SETUPS = {
    "plain stream": {},
    "+ ControlNet (canny)": dict(controlnet=[dict(model="random", preprocessor="canny")]),
    "+ 2 ControlNets (canny, tile)": dict(controlnet=[dict(model="random", preprocessor="canny"),
                                                      dict(model="random", preprocessor="tile", scale=0.5)]),
    "+ IP-Adapter (style image)": dict(ip_adapter=dict(model="random", image_encoder="random", scale=0.6)),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd-turbo-reduced")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--frames", type=int, default=10, help="timed frames per setup (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = [32, 45]
    pipes = {}
    for name, settings in SETUPS.items():
        pipe = load_pipeline(model=args.preset, vae="taesd-random", t_index_list=steps, cfg_type="self",
                             width=args.size, height=args.size, device=args.device, dtype=args.dtype, seed=1,
                             **settings)
        pipe.prepare(prompt="a photo of a city street", guidance_scale=1.2)
        if "ip_adapter" in settings:
            pipe.set_style_image(torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(1)))
        pipes[name] = pipe
    generator = torch.Generator().manual_seed(0)
    frames = [torch.rand(1, 3, args.size, args.size, generator=generator) for _ in range(args.warmup + args.frames)]
    timings = time_interleaved({name: (lambda frame, pipe=pipe: pipe(frame.to(args.device), output="tensor"))
                                for name, pipe in pipes.items()}, frames, args.device, args.warmup)
    base = timings["plain stream"].median_ms
    flops = {name: unet_gflops(load_pipeline(model=args.preset, width=args.size, height=args.size, device="meta",
                                             dtype="float16", t_index_list=steps, **settings))
             for name, settings in SETUPS.items()}
    print(f"{args.preset}, img2img {len(steps)} steps, self CFG, TAESD layout, {args.size}², {args.device} "
          f"{args.dtype}, {args.threads} thread(s), {args.frames} frames each, interleaved\n")
    print("| setup | ms/frame (measured) | × plain | UNet call GFLOP (counted) | × plain |")
    print("|---|---|---|---|---|")
    for name in pipes:
        median = timings[name].median_ms
        print(f"| {name} | {median:.0f} | {median / base:.2f} | {flops[name]:.0f} | "
              f"{flops[name] / flops['plain stream']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
