"""Throughput, latency and parity of every accelerator on the same streams.

Scenarios: img2img 1 step (no CFG), img2img 2 steps with `self` CFG, and V2V 4 steps with the
feature bank (mode "video"). Per backend and scenario: setup seconds (load + export / compile /
engine build + the warm-up frames, whose first calls compile and capture), fps and latency
(median, p95) over the timed frames, and the output's difference from eager on the same frames
(max abs on [0,1] pixels, and relative L2 ‖out − eager‖ / ‖eager‖). Timed frames go through the
backends in turn (frame 1 on every backend, then frame 2, ...) so that load from other processes
hits them alike. A backend that cannot run a scenario gets a row saying why.

    python benchmarks/accelerators.py                           # CPU: sd-turbo-reduced, 256², fp32
    python benchmarks/accelerators.py --device cuda --preset sd-turbo-random --size 512 --vae taesd-random \\
        --backends eager,compile-nographs,compile,tensorrt --out table.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Timing, markdown_table, moving_frames, publish, synchronize  # noqa: E402
from livediff.pipelines import load_pipeline  # noqa: E402
from livediff.errors import LivediffError  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    name: str
    settings: dict
    guidance_scale: float


SCENARIOS = {
    "img2img-1step": Scenario("img2img 1 step", dict(mode="img2img", t_index_list=[32], cfg_type="none"), 1.0),
    "img2img-2step-self": Scenario("img2img 2 steps, self CFG",
                                   dict(mode="img2img", t_index_list=[32, 45], cfg_type="self"), 1.4),
    "v2v-4step-bank": Scenario("V2V 4 steps, bank", dict(mode="video", t_index_list=[30, 35, 40, 45],
                                                        cfg_type="none", bank={}), 1.0),
}

# backend label → (accelerator, accelerator_options)
BACKENDS = {
    "eager": ("eager", {}),
    "compile": ("compile", {}),
    "compile-nographs": ("compile", {"cuda_graphs": False}),
    "onnxruntime": ("onnxruntime", {}),
    "tensorrt": ("tensorrt", {}),
}


def frames_as_tensors(count: int, size: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.from_numpy(f).permute(2, 0, 1).unsqueeze(0).to(device=device, dtype=dtype) / 255
            for f in moving_frames(count, size, size)]


def parity(outputs: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[float, float]:
    diff = torch.stack(outputs) - torch.stack(reference)
    return float(diff.abs().max()), float(diff.norm() / torch.stack(reference).norm())


def build(backend: str, scenario: Scenario, args, frames: list[torch.Tensor], cache_dir: str):
    """A pipeline on `backend`, run over the warm-up frames (compiles, exports, captures), then reset."""
    accelerator, options = BACKENDS[backend]
    options = {**options, "cache_dir": cache_dir}
    start = time.perf_counter()
    pipe = load_pipeline(model=args.preset, vae=args.vae, width=args.size, height=args.size, device=args.device,
                         dtype=args.dtype, accelerator=accelerator, accelerator_options=options, **scenario.settings)
    name = pipe.runners.name
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=scenario.guidance_scale)
    for frame in frames[: args.warmup]:
        pipe(frame)
    synchronize(args.device)
    setup = time.perf_counter() - start
    pipe.reset()
    return pipe, name, setup


def run_interleaved(pipes: dict, frames: list[torch.Tensor], device: str, warmup: int):
    """Every frame goes through every pipeline in turn, so load from other processes hits all alike."""
    outputs = {key: [] for key in pipes}
    seconds = {key: [] for key in pipes}
    for i, frame in enumerate(frames):
        for key, pipe in pipes.items():
            start = time.perf_counter()
            out = pipe(frame)
            synchronize(device)
            if i >= warmup:
                seconds[key].append(time.perf_counter() - start)
            outputs[key].append(out.float().cpu())
    return outputs, {key: Timing(s) for key, s in seconds.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd-turbo-reduced")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default float16 on CUDA, float32 on CPU")
    parser.add_argument("--vae", default=None, help="tiny VAE preset or id, e.g. taesd-random")
    parser.add_argument("--backends", default=None,
                        help=f"comma-separated from {', '.join(BACKENDS)} (default: eager,compile,onnxruntime on "
                             f"CPU; eager,compile-nographs,compile,tensorrt on CUDA)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"from {', '.join(SCENARIOS)}")
    parser.add_argument("--frames", type=int, default=12, help="timed frames per run (after --warmup frames)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cache-dir", default=None, help="engine/graph cache (default: a fresh temporary folder)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch and ONNX Runtime (default: torch's default). On a machine "
                             "other processes share, 1 avoids OpenMP threads waiting on descheduled siblings")
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("float16" if cuda else "float32")
    default_backends = "eager,compile-nographs,compile,tensorrt" if cuda else "eager,compile,onnxruntime"
    backends = (args.backends or default_backends).split(",")
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    frames = frames_as_tensors(args.frames + args.warmup, args.size, args.device, torch.float32)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="livediff-bench-")

    load_before = os.getloadavg()[0]
    rows = []
    for key in args.scenarios.split(","):
        scenario = SCENARIOS[key]
        pipes, built = {}, {}
        for backend in backends:
            try:
                pipe, name, setup = build(backend, scenario, args, frames, cache_dir)
            except LivediffError as exc:
                rows.append([scenario.name, backend, "-", "-", "-", "-", "-", "-", f"not run: {exc}"])
                print(f"{scenario.name} / {backend}: not run: {exc}", flush=True)
                continue
            pipes[backend], built[backend] = pipe, (name, setup)
        outputs, timings = run_interleaved(pipes, frames, args.device, args.warmup)
        reference = outputs.get("eager")
        for backend, timing in timings.items():
            name, setup = built[backend]
            max_abs, rel = parity(outputs[backend], reference) if reference else (float("nan"),) * 2
            rows.append([scenario.name, name, round(setup, 1), timing.fps, timing.median_ms, timing.p95_ms,
                         f"{max_abs:.2e}", f"{rel:.2e}", ""])
            print(f"{scenario.name} / {name}: {timing.fps:.3g} fps, median {timing.median_ms:.4g} ms, "
                  f"setup {setup:.1f} s, max|Δ| {max_abs:.2e}", flush=True)
        del pipes

    device_name = torch.cuda.get_device_name() if cuda else "CPU"
    title = (f"{args.preset}, {args.size}x{args.size}, {args.device} ({device_name}) {args.dtype}, vae "
             f"{args.vae or 'model VAE'}, {args.frames} timed frames after {args.warmup} warm-up, "
             f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, 1-min load average "
             f"{load_before:.1f} at start / {os.getloadavg()[0]:.1f} at end (other processes share the machine)")
    table = markdown_table(["scenario", "backend", "setup s", "fps", "median ms", "p95 ms", "max abs err vs eager",
                            "rel L2 err vs eager", "note"], rows)
    publish(title, table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
