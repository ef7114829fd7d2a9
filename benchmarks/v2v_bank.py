"""Cost of the video pipeline's parts: feature bank (FIFO / merged, with and without fusion, sparse),
token merging, against the same pipeline with everything off, on a synthetic moving clip.

Every configuration runs in its own process so its peak memory is its own: on CUDA the peak of
torch.cuda.max_memory_allocated during the frames, on CPU the process's peak RSS growth over its
RSS after loading (torch's CPU allocations are invisible to tracemalloc). fps counts every frame
after `--warmup` (VAE encode, UNet, bank update, VAE decode, conversion to numpy). On CPU the
process's CPU seconds per frame are printed too: with `--threads 1` they barely change when other
programs compete for the cores (with more threads, threads waiting for each other spin and count
as CPU time), so on a shared machine their ratios are the ones to trust.

The clip is a static camera over a smooth background with two textured objects moving across it,
so most tokens are static and the sparse bank has something to leave out.

The temporal metrics (warp error along the source's optical flow, frame-difference ratio) of each
run's output are printed too. With random-weight presets the output is not an image of anything,
so these numbers only show that the bank changes the dynamics, not that it improves quality.
Outputs lag the input by (steps − 1) frames in a stream batch; the metrics align them.

    python benchmarks/v2v_bank.py --frames 300                          # CPU: sd-turbo-reduced, 256²
    python benchmarks/v2v_bank.py --preset sd-turbo-random --size 512 --device cuda
    python benchmarks/v2v_bank.py --preset sd15-random --size 512 --device cuda --t-index-list 30,35,40,45
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, synchronize  # noqa: E402

CONFIGS: dict[str, dict] = {
    "off": dict(bank=False),
    "fifo1+fusion": dict(bank=dict(merge=False)),
    "fifo1": dict(bank=dict(merge=False, fusion_blocks=())),
    "merged1+fusion": dict(bank=dict(merge=True)),
    "merged1": dict(bank=dict(merge=True, fusion_blocks=())),
    "merged4+fusion": dict(bank=dict(merge=True, max_frames=4)),
    "fifo1+fusion+sparse0.5": dict(bank=dict(merge=False, sparse_keep_ratio=0.5)),
    "merged4+fusion+sparse0.5": dict(bank=dict(merge=True, max_frames=4, sparse_keep_ratio=0.5)),
    "off+tome0.3": dict(bank=False, token_merge_ratio=0.3),
    "off+tome0.5": dict(bank=False, token_merge_ratio=0.5),
    "merged1+fusion+tome0.5": dict(bank=dict(merge=True), token_merge_ratio=0.5),
}


def object_clip(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Static smooth background; a textured square moving right and a disc moving diagonally."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.random((size, size, 3)).astype(np.float32), (0, 0), size / 32)
    background = (255 * (background - background.min()) / (background.max() - background.min())).astype(np.uint8)
    side = size // 5
    square = (rng.random((side, side, 3)) * 255).astype(np.uint8)
    frames = []
    for i in range(count):
        frame = background.copy()
        x = (3 * i) % (size - side)
        frame[size // 5:size // 5 + side, x:x + side] = square
        cx, cy = (size // 4 + 2 * i) % size, (size // 2 + i) % size
        cv2.circle(frame, (cx, cy), size // 10, (230, 60, 40), -1)
        frames.append(frame)
    return frames


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args, name: str) -> dict:
    """Run one configuration; returns its measurements as a dict (printed as JSON by the child)."""
    from livediff.pipelines import load_pipeline
    from livediff.app.eval.metrics import evaluate_frames

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    t_index = [int(i) for i in args.t_index_list.split(",")]
    pipe = load_pipeline(model=args.preset, mode="video", t_index_list=t_index, cfg_type=args.cfg_type,
                         width=args.size, height=args.size, device=args.device, dtype=dtype, vae=args.vae,
                         **CONFIGS[name])
    pipe.prepare(prompt="claymation", negative_prompt="blurry", guidance_scale=args.guidance_scale)
    frames = object_clip(args.frames, args.size)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_mb = torch.cuda.memory_allocated() / 2**20
    else:
        base_mb = _current_rss_mb()
    outputs, seconds, cpu_seconds = [], [], []
    for frame in frames:
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs.append(pipe(frame))
        synchronize(args.device)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    timed = seconds[args.warmup:]
    lag = len(t_index) - 1
    metrics = evaluate_frames(frames[:len(frames) - lag], outputs[lag:])
    return dict(name=name, fps=len(timed) / sum(timed), median_ms=float(np.median(timed)) * 1000,
                cpu_s=float(np.mean(cpu_seconds[args.warmup:])),
                peak_mb=peak_mb, extra_mb=peak_mb - base_mb, bank_mb=(pipe.bank.nbytes / 2**20 if pipe.bank else 0.0),
                warp_error=metrics.warp_error, source_warp_error=metrics.source_warp_error,
                frame_diff_ratio=metrics.frame_diff_ratio, scene_cuts=int(pipe.scene_cuts),
                dropped_moving=(int(pipe.bank.dropped_moving) if pipe.bank else 0))


def run_isolated(argv: list[str], name: str) -> dict:
    result = subprocess.run([sys.executable, __file__, *argv, "--worker", name], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"configuration {name!r} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def tables(results: list[dict], args, dtype: str) -> str:
    base = results[0]
    memory = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    speed = [[r["name"], r["fps"], r["fps"] / base["fps"], r["median_ms"], r["cpu_s"], r["cpu_s"] / base["cpu_s"],
              r["peak_mb"], r["extra_mb"], r["extra_mb"] / base["extra_mb"] if base["extra_mb"] > 0 else "-",
              r["bank_mb"]] for r in results]
    quality = [[r["name"], r["warp_error"], r["warp_error"] / base["warp_error"], r["frame_diff_ratio"],
                r["source_warp_error"], r["scene_cuts"], r["dropped_moving"]] for r in results]
    title = (f"{args.preset}, {args.size}x{args.size}, {args.device} {dtype}, vae {args.vae}, "
             f"t_index_list={args.t_index_list}, cfg {args.cfg_type}, {args.frames} frames per configuration "
             f"({args.warmup} untimed), {args.threads or torch.get_num_threads()} torch threads, torch {torch.__version__}")
    return "\n\n".join([
        title,
        markdown_table(["configuration", "fps", "× fps vs off", "median ms", "CPU s/frame", "× CPU s vs off",
                        f"{memory} MB",
                        "growth over loaded MB", "× growth vs off", "bank tensors MB"], speed),
        "Temporal metrics of the outputs (random weights: says the bank changes the dynamics, not quality)",
        markdown_table(["configuration", "warp error", "× vs off", "frame diff ratio", "source warp error (floor)",
                        "scene cuts", "moving tokens over budget"], quality),
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="sd-turbo-reduced")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--t-index-list", default="32,45")
    parser.add_argument("--cfg-type", default="self")
    parser.add_argument("--guidance-scale", type=float, default=1.2)
    parser.add_argument("--vae", default="taesd-random", help="tiny VAE preset or id; 'none' keeps the model's VAE")
    parser.add_argument("--frames", type=int, default=300, help="frames per configuration (>= 300 for the report)")
    parser.add_argument("--warmup", type=int, default=5, help="first frames left out of the timing")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads per configuration (0: torch's default); 1 keeps CPU seconds "
                             "comparable on a shared machine, where waiting threads spin and count as CPU time")
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.vae == "none":
        args.vae = None
    if args.worker:
        print(json.dumps(worker(args, args.worker)))
        return 0
    names = [n.strip() for n in args.configs.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or names[0] != "off":
        parser.error(f"--configs must start with 'off' and name only known configurations; unknown: {unknown}")
    passthrough = list(argv if argv is not None else sys.argv[1:])
    results = []
    for name in names:
        results.append(run_isolated(passthrough, name))
        print(f"{name}: {results[-1]['fps']:.2f} fps", file=sys.stderr, flush=True)
    dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    text = tables(results, args, dtype)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
