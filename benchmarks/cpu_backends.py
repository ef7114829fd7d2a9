"""CPU backends side by side with the StreamDiffusion 0.1.1 package, interleaved frame by frame in one
process on the same checkpoint (same module objects), same work: img2img, `--steps` from
t_index_list [32, 45], `self` CFG, TAESD, one size, one thread count.

StreamDiffusion is never a dependency of livediff; fetch its wheel and put it on PYTHONPATH:

    pip download --no-deps streamdiffusion==0.1.1 -d /tmp/sd
    PYTHONPATH=/tmp/sd/streamdiffusion-0.1.1-py3-none-any.whl \\
        python benchmarks/cpu_backends.py --preset sd-turbo-random --size 256 --threads 1

Its `__call__` times itself with CUDA events, which a CPU build of torch lacks, so the frame here is
its `__call__` body without them: preprocess, encode_image, predict_x0_batch, decode_image.
Every contender gets the same frames in the same order; a round times each once, and the ratios
compare medians over the same rounds, so machine load drifts affect all alike.

Each backend holds its own copy of the weights: with the full SD 2.1 layout (3.5 GB of float32 UNet)
four backends at once exceed 24 GiB, so measure `openvino-int8` (or `compile`) in a run of its own.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import markdown_table, publish, time_interleaved  # noqa: E402
from livediff import load_pipeline  # noqa: E402

T_INDEX_LIST = [32, 45]


def streamdiffusion_contender(models, size: int, guidance: float):
    try:
        from streamdiffusion import StreamDiffusion
    except ImportError:
        sys.exit("StreamDiffusion is not importable; see this script's docstring for how to put it on PYTHONPATH")
    from diffusers import StableDiffusionPipeline

    sd_pipe = StableDiffusionPipeline(vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
                                      unet=models.unet, scheduler=models.scheduler, safety_checker=None,
                                      feature_extractor=None, requires_safety_checker=False)
    stream = StreamDiffusion(sd_pipe, t_index_list=T_INDEX_LIST, torch_dtype=torch.float32, width=size, height=size,
                             cfg_type="self")
    stream.prepare(prompt="oil painting", guidance_scale=guidance)

    @torch.no_grad()
    def frame(image: torch.Tensor) -> torch.Tensor:
        x = stream.image_processor.preprocess(image, size, size).to(device=stream.device, dtype=stream.dtype)
        return stream.decode_image(stream.predict_x0_batch(stream.encode_image(x))).detach().clone()

    return frame


def livediff_contender(accelerator: str, options: dict, preset: str, size: int, guidance: float):
    pipe = load_pipeline(model=preset, vae="taesd-random", t_index_list=T_INDEX_LIST, cfg_type="self", width=size,
                         height=size, device="cpu", dtype="float32", accelerator=accelerator,
                         accelerator_options=options or None)
    pipe.prepare(prompt="oil painting", guidance_scale=guidance)
    return pipe, lambda image: pipe(image, output="tensor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd-turbo-random", help="random-weight layout (default: SD 2.1's)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8, help="timed rounds after 3 warm-up rounds")
    parser.add_argument("--backends", default="eager,onnxruntime,openvino",
                        help="comma-separated: eager, compile, onnxruntime, openvino, openvino-int8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="livediff-cpu-bench-") as cache:  # full-size graphs: ~14 GB
        compare(args, cache)


def compare(args, cache: str) -> None:
    guidance = 1.2

    contenders = {}
    first = None
    for backend in args.backends.split(","):
        accelerator, options = backend, {}
        if backend != "eager" and backend != "compile":
            options["cache_dir"] = cache
        if backend == "openvino-int8":
            accelerator, options["weights"] = "openvino", "int8"
        start = time.perf_counter()
        pipe, run = livediff_contender(accelerator, options, args.preset, args.size, guidance)
        print(f"{backend}: ready in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        first = first or pipe
        contenders[f"livediff {backend}"] = run
    contenders["StreamDiffusion 0.1.1"] = streamdiffusion_contender(first.models, args.size, guidance)

    frames = [torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(i))
              for i in range(args.frames + 3)]
    timings = time_interleaved(contenders, frames, progress=lambda text: print(text, file=sys.stderr))
    reference = timings["StreamDiffusion 0.1.1"].median_ms
    rows = [[name, f"{1000 / t.median_ms:.2f}", f"{t.median_ms:.0f}", f"{reference / t.median_ms:.2f}x"]
            for name, t in timings.items()]
    publish(f"img2img {len(T_INDEX_LIST)} steps, self CFG, TAESD, {args.preset} {args.size}², "
            f"{args.threads} thread(s), CPU, interleaved",
            markdown_table(["contender", "fps (median)", "ms (median)", "speed vs StreamDiffusion"], rows), args.out)


if __name__ == "__main__":
    main()
