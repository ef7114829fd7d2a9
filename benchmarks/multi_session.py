"""N live clients streaming through the real UI server at once: batched sessions vs one frame per call.

Each simulated client is a `gradio_client.Client` on the server's `/live_frame` endpoint (the same
path the browser's webcam tab takes, minus the browser), sending its next camera frame as soon as
the previous picture came back, with its own prompt. For N = 1, 2, 4, 8 clients the server runs
twice, interleaved: `--max-batch 8` (frames of all sessions share network runs) and `--max-batch 1`
(one frame per network call, first come first served: the serial lock livediff had before).
Reported: aggregate frames/s over all clients, per-frame round-trip latency p50/p95, and the mean
number of frames per batch the server saw.

    python benchmarks/multi_session.py --preset sd-turbo-reduced --size 256 --seconds 40
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchmarks.common import markdown_table, moving_frames, publish  # noqa: E402

PROMPTS = ("oil painting", "claymation", "watercolour", "pencil sketch", "neon", "mosaic", "ukiyo-e", "pixel art")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def stream_clients(url: str, clients: int, seconds: float, frame_paths: list[str]) -> tuple[int, list[float]]:
    """Run `clients` clients for `seconds`; (frames delivered, round-trip seconds of every frame)."""
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    delivered = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(index: int) -> None:
        c = Client(url, verbose=False)
        prompt = PROMPTS[index % len(PROMPTS)]
        i = 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            c.predict(handle_file(frame_paths[i % len(frame_paths)]), prompt=prompt, api_name="/live_frame")
            with lock:
                latencies.append(time.perf_counter() - start)
                delivered[0] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return delivered[0], latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sd-turbo-reduced")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0, help="streaming time per configuration")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from PIL import Image

    from livediff.app.ui.engine import Engine
    from ui_helpers import running_server

    engine = Engine(dict(model=args.preset, width=args.size, height=args.size, device="cpu", dtype="float32",
                         t_index_list=[32, 45], cfg_type="self"), stream_mode="video")
    folder = Path(tempfile.mkdtemp(prefix="livediff-multi-"))
    frame_paths = []
    for i, frame in enumerate(moving_frames(12, args.size, args.size)):
        frame_paths.append(str(folder / f"f{i}.png"))
        Image.fromarray(frame).save(frame_paths[-1])

    rows = []
    with running_server(engine, restart_after_s=60.0) as server:
        stream_clients(server.url, 1, 3.0, frame_paths)  # warm-up: first calls build and allocate
        for clients in (int(n) for n in args.clients.split(",")):
            results = {}
            for label, max_batch in (("batched", 8), ("one frame per call", 1)):
                engine.batcher.max_batch = max_batch
                engine.batcher._history.clear()
                frames, latencies = stream_clients(server.url, clients, args.seconds, frame_paths)
                stats = engine.batcher.stats()
                results[label] = (frames / args.seconds, latencies, stats.mean_sessions)
                print(f"{clients} client(s), {label}: {frames} frames", file=sys.stderr)
            base = results["one frame per call"][0]
            for label, (fps, latencies, per_batch) in results.items():
                rows.append([str(clients), label, f"{fps:.2f}", f"{fps / base:.2f}x",
                             f"{statistics.median(latencies) * 1000:.0f}", f"{percentile(latencies, 0.95) * 1000:.0f}",
                             f"{per_batch:.2f}"])
    publish(f"{args.preset} {args.size}², video mode (bank on), 2 steps, self CFG, {args.threads} thread(s), CPU, "
            f"{args.seconds:g} s per configuration, clients on loopback through gradio_client",
            markdown_table(["clients", "server", "frames/s (all clients)", "vs one per call", "latency p50 ms",
                            "latency p95 ms", "frames per batch"], rows), args.out)


if __name__ == "__main__":
    main()
