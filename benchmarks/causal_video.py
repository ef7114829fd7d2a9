"""What the causal video path (mode "causal-video", a Wan 2.1 layout DiT with a rolling K/V cache) costs
per video frame, and that its memory stays flat over an endless stream.

Memory (measured, run first so nothing bigger has raised the process's peak): `tiny-wan-causal` streams
1,000 chunks of 4 frames through `pipe(frame)`; after 10, 100 and 1,000 chunks the table gives the
transformer's K/V cache bytes, the VAE streams' conv-cache bytes, the process's current RSS and its peak
RSS (`resource.getrusage`). Flat = the stream holds a fixed amount whatever its length.

CPU cost (measured): `wan-causal-reduced` (the 1.3B's 30 blocks and attention layout, a sixth of its width;
the Wan VAE layout at a third of its width) against the SD-Turbo V2V path (`sd-turbo-reduced` + TAESD
layout, mode "video": feature bank on), same size, same 2 stages (t_index_list [32, 45]), random weights,
one thread. Chunks of 1 latent frame = 4 video frames, interleaved chunk by chunk (4 frames of each in
turn) so both see the same machine load; the causal stream is primed with its first (single-frame)
chunk before timing. The causal chunk is split into its parts (VAE encode, denoise = 2 transformer calls
+ the clean pass that writes the cache, VAE decode).

GPU (counted, then modelled): floating-point operations counted by PyTorch's FLOP counter on the `meta`
device (no weights allocated) for the full `wan-causal-random` transformer (Wan 2.1 T2V 1.3B layout) per
chunk of 1 latent frame (the 2 stages + the clean pass, against a full cache of 1 sink + 4 window chunks,
512 text tokens as Wan's pipelines use) at 480x832 (Wan's size) and 512x512, divided by the 4 video
frames a chunk yields; and the SD-Turbo UNet (`sd-turbo-random`) per frame (one call, a row per stage)
at 512². The VAEs are not in these counts. The GPU frame time is modelled as FLOPs / an assumed
80 TFLOP/s effective fp16 (`--tflops`): a compute-bound estimate, not a measurement.

    python benchmarks/causal_video.py                  # CPU: 160², 1 thread, 6 timed chunks, 1,000-chunk memory run
    python benchmarks/causal_video.py --size 256 --chunks 10 --memory-chunks 100
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, moving_frames, time_interleaved, unet_gflops  # noqa: E402
from livediff.pipelines import load_pipeline  # noqa: E402

STEPS = [32, 45]
FRAMES_PER_CHUNK = 4  # 1 latent frame = 4 video frames with the Wan VAE (after the stream's first chunk)
CAUSAL = dict(chunk_frames=1, sink_chunks=1, window_chunks=4)
PROMPT = "a watercolour painting of a city street"


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MiB (Linux: /proc, ru_maxrss in KiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    current = pages * resource.getpagesize() / 2**20
    return current, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def conv_cache_bytes(pipe) -> int:
    from livediff.pipelines.causal.vae import cache_tensors

    return sum(t.numel() * t.element_size() for stream in (pipe.encoder, pipe.decoder)
               for t in cache_tensors(stream.cache))


def memory_table(checkpoints: list[int], size: int = 64) -> str:
    pipe = load_pipeline(model="tiny-wan-causal", mode="causal-video", width=size, height=size, device="cpu",
                         dtype="float32", t_index_list=STEPS, causal=CAUSAL)
    pipe.prepare(prompt=PROMPT)
    frames = moving_frames(64, size, size)
    pipe(frames[0])  # the stream's first chunk is one frame
    rows, i, start = [], 1, time.perf_counter()
    for target in checkpoints:
        while pipe.chunks < target:
            for _ in range(FRAMES_PER_CHUNK):
                out = pipe(frames[i % len(frames)])
                i += 1
            assert len(out) == FRAMES_PER_CHUNK
        current, peak = rss_mib()
        rows.append([pipe.chunks, i, f"{pipe.cache.nbytes / 2**10:.1f}", f"{conv_cache_bytes(pipe) / 2**10:.1f}",
                     f"{current:.0f}", f"{peak:.0f}", f"{time.perf_counter() - start:.0f}"])
    return markdown_table(["chunks", "video frames", "K/V cache KiB", "VAE conv caches KiB", "RSS MiB",
                           "peak RSS MiB", "s elapsed"], rows)


class _Timed:
    """`fn` (a VAE stream or a method) whose calls append their seconds to `seconds`; attributes pass through."""

    def __init__(self, fn, seconds: list[float]):
        self._fn, self._seconds = fn, seconds

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._fn(*args, **kwargs)
        finally:
            self._seconds.append(time.perf_counter() - start)

    def __getattr__(self, name):
        return getattr(self._fn, name)


def timed_parts(pipe) -> dict[str, list[float]]:
    """Wrap the pipeline's encoder, denoiser and decoder to record each part's seconds per chunk."""
    parts: dict[str, list[float]] = {"VAE encode": [], "denoise (2 stages + cache pass)": [], "VAE decode": []}
    pipe.encoder = _Timed(pipe.encoder, parts["VAE encode"])
    pipe.denoise = _Timed(pipe.denoise, parts["denoise (2 stages + cache pass)"])
    pipe.decoder = _Timed(pipe.decoder, parts["VAE decode"])
    return parts


def cpu_table(size: int, chunks: int, warmup: int) -> str:
    import statistics

    causal = load_pipeline(model="wan-causal-reduced", mode="causal-video", width=size, height=size, device="cpu",
                           dtype="float32", t_index_list=STEPS, causal=CAUSAL, seed=1)
    causal.prepare(prompt=PROMPT)
    image = load_pipeline(model="sd-turbo-reduced", vae="taesd-random", mode="video", t_index_list=STEPS,
                          width=size, height=size, device="cpu", dtype="float32", seed=1)
    image.prepare(prompt=PROMPT)
    frames = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255
              for f in moving_frames(FRAMES_PER_CHUNK * (warmup + chunks) + 1, size, size)]
    causal(frames[0], output="tensor")  # prime: the stream's first chunk is a single frame
    parts = timed_parts(causal)
    groups = [frames[1 + FRAMES_PER_CHUNK * k:1 + FRAMES_PER_CHUNK * (k + 1)] for k in range(warmup + chunks)]

    def run_causal(group):
        outs = [o for f in group for o in causal(f, output="tensor")]
        assert len(outs) == FRAMES_PER_CHUNK

    def run_image(group):
        for f in group:
            image(f, output="tensor")

    timings = time_interleaved({"causal": run_causal, "image": run_image}, groups, "cpu", warmup)
    base = timings["image"].median_ms / FRAMES_PER_CHUNK
    rows = []
    for name, label in (("causal", "causal-video: wan-causal-reduced + reduced Wan VAE, chunk of 1 latent frame"),
                        ("image", "video (V2V): sd-turbo-reduced + TAESD layout, bank on")):
        per_frame = timings[name].median_ms / FRAMES_PER_CHUNK
        rows.append([label, f"{timings[name].median_ms:.0f}", f"{timings[name].p95_ms:.0f}", f"{per_frame:.0f}",
                     f"{per_frame / base:.2f}"])
    for name, seconds in parts.items():
        timed = seconds[-chunks:]
        rows.insert(1 + list(parts).index(name),
                    [f"  causal, of which {name}", f"{statistics.median(timed) * 1000:.0f}", "", "", ""])
    return markdown_table(["path", "ms / chunk of 4 frames, median (measured)", "p95", "ms / video frame",
                           "× SD-Turbo V2V"], rows)


def causal_gflops(width: int, height: int, text_tokens: int = 512) -> float:
    """GFLOPs of one chunk of 1 latent frame through the full wan-causal-random transformer (2 stages + the clean
    cache pass) against a full cache, on the meta device, float16."""
    from torch.utils.flop_counter import FlopCounterMode

    pipe = load_pipeline(model="wan-causal-random", mode="causal-video", width=width, height=height, device="meta",
                         dtype="float16", t_index_list=STEPS, causal=CAUSAL)
    pipe.text = torch.zeros(1, text_tokens, 4096, dtype=torch.float16, device="meta")
    latents = torch.zeros(1, 16, 1, height // 8, width // 8, dtype=torch.float16, device="meta")
    for _ in range(CAUSAL["sink_chunks"] + CAUSAL["window_chunks"]):
        pipe.denoise(latents)  # fill the cache (its shapes are static, so the count is the same either way)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        pipe.denoise(latents)
    return counter.get_total_flops() / 1e9


def gpu_table(tflops: float) -> str:
    rows = []
    unet = unet_gflops(load_pipeline(model="sd-turbo-random", width=512, height=512, device="meta",
                                     dtype="float16", t_index_list=STEPS))
    for width, height in ((832, 480), (512, 512)):
        chunk = causal_gflops(width, height)
        per_frame = chunk / FRAMES_PER_CHUNK
        rows.append([f"causal-video, wan-causal-random (Wan 2.1 1.3B DiT), {width}x{height}", f"{chunk:.0f}",
                     f"{per_frame:.0f}", f"{per_frame / unet:.1f}", f"{per_frame / tflops:.1f}",
                     f"{1000 * tflops / per_frame:.0f}"])
    rows.append(["img2img/video, sd-turbo-random UNet (SD 2.1), 512x512", "", f"{unet:.0f}", "1.0",
                 f"{unet / tflops:.1f}", f"{1000 * tflops / unet:.0f}"])
    return markdown_table(["network, size", "GFLOP / chunk of 4 frames (counted)", "GFLOP / video frame (counted)",
                           "× SD-Turbo UNet", f"ms / frame at {tflops:g} TFLOP/s (modelled)",
                           "frames/s (modelled)"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=160, help="CPU comparison size, a multiple of 16")
    parser.add_argument("--chunks", type=int, default=6, help="timed chunks of 4 frames per path (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-chunks", type=int, default=1000)
    parser.add_argument("--tflops", type=float, default=80.0, help="assumed effective fp16 TFLOP/s for the model")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoints = [n for n in (10, 100, 1000) if n < args.memory_chunks] + [args.memory_chunks]

    print(f"## Memory over a long stream (measured): tiny-wan-causal, 64², sink 1 + window 4 chunks, "
          f"chunks of 4 frames, CPU, {args.threads} thread(s)\n")
    print(memory_table(sorted(set(checkpoints))) + "\n")
    print(f"## CPU cost per video frame (measured): {args.size}², 2 stages {STEPS}, random weights, "
          f"{args.threads} thread(s), {args.chunks} chunks of 4 frames each after {args.warmup} warm-up, "
          f"interleaved chunk by chunk\n")
    print(cpu_table(args.size, args.chunks, args.warmup) + "\n")
    print(f"## GPU per video frame: FLOPs counted on the meta device, time modelled at an assumed "
          f"{args.tflops:g} TFLOP/s effective fp16 (transformer / UNet only, VAEs not counted)\n")
    print(gpu_table(args.tflops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
