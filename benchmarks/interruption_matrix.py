"""The batch video job under interruption: SIGINT, SIGTERM, SIGKILL at random moments and a
file-size limit, each followed by `--resume` until the output is finished; counted outcomes.

Each case runs a child process doing `process_many` on a 64x64 clip (libx264 by default, whose
encoder holds ~40 frames before muxing, so a signal can land between a frame taken and its packets
muxed; `--codec ffv1` is lossless, so the finished output can also be compared with an
uninterrupted run pixel for pixel) with a per-frame
processor that adds a tint and sleeps `--frame-ms` (a stand-in for the model: the job's segment,
lock and signal handling is what is exercised). The signal lands at a random moment of the run
(uniform over the reference run's duration, after the child reports it has started); the disk-limit
cases set RLIMIT_FSIZE (`ulimit -f`) to a random size below the output's. Counted: the child's exit
status, whether a playable partial output was left, the resumes needed, any resume that failed, and
whether the final output equals the uninterrupted one (frame count, timestamps, frame hashes).

    python benchmarks/interruption_matrix.py                 # 8 of each signal + 6 disk limits
    python benchmarks/interruption_matrix.py --each 3 --limits 2 --codec ffv1
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import av
import numpy as np

from livediff.app.video.codecs import FFMPEG_ERRORS
from livediff.app.video.workarea import partial_path_for

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent("""
    import resource, sys, time
    import numpy as np
    from livediff.app.video.batch import process_many
    from livediff.app.video.job import Terminated
    from livediff.app.video.options import JobOptions

    src, out, resume, limit, frame_ms, codec, segment = sys.argv[1:]
    resume, limit, frame_ms, segment = resume == "1", int(limit), float(frame_ms), int(segment)
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    class Tint:
        def __call__(self, rgb):
            time.sleep(frame_ms / 1000)
            return np.clip(rgb.astype(np.int16) + 20, 0, 255).astype(np.uint8)
        def reset(self):
            pass
        def identity(self):
            return {"tint": 20}

    print("started", flush=True)
    try:
        results = process_many([src], out, Tint, JobOptions(codec=codec, segment_frames=segment, resume=resume,
                                                            overwrite=not resume, progress=False, quiet=True))
    except KeyboardInterrupt as stop:
        sys.exit(143 if isinstance(stop, Terminated) else 130)
    print(results[0].error or "", flush=True)
    sys.exit(results.exit_code)
""")


def make_source(path: Path, frames: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=15)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(frames):
            rgb = np.full((64, 64, 3), i * 2 % 256, np.uint8) + rng.integers(0, 8, (64, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def frame_hashes(path: Path) -> list[tuple[int | None, str]]:
    with av.open(str(path)) as container:
        return [(f.pts, hashlib.sha256(f.to_ndarray(format="rgb24").tobytes()).hexdigest())
                for f in container.decode(video=0)]


def playable(path: Path) -> bool:
    try:
        return len(frame_hashes(path)) > 0
    except FFMPEG_ERRORS:
        return False


def child(src: Path, out: Path, resume: bool, limit: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(src), str(out), "1" if resume else "0", str(limit),
                             str(args.frame_ms), args.codec, str(args.segment)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_started(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "started":
        raise RuntimeError(f"child did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--each", type=int, default=8, help="interruptions per signal")
    parser.add_argument("--limits", type=int, default=6, help="runs under a file-size limit")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--segment", type=int, default=60, help="frames per segment")
    parser.add_argument("--codec", default="libx264")
    parser.add_argument("--frame-ms", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="livediff-interruptions-"))
    src = work / "in.mkv"  # FFV1: the source itself is exact
    make_source(src, args.frames)
    reference = work / "reference.mkv"
    t0 = time.perf_counter()
    proc = child(src, reference, False, 0, args)
    wait_started(proc)
    t_started = time.perf_counter()
    if proc.wait() != 0:
        raise RuntimeError(proc.stderr.read() if proc.stderr else "reference run failed")
    duration = time.perf_counter() - t_started
    want = frame_hashes(reference)
    size = reference.stat().st_size
    print(f"reference: {len(want)} frames, {size} bytes, {duration:.1f} s ({time.perf_counter() - t0:.1f} s with start-up)")

    cases = [(sig.name, sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL) for _ in range(args.each)]
    cases += [("fsize", None)] * args.limits
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for n, (kind, sig) in enumerate(cases):
        out = work / f"out{n}.mkv"
        limit = rng.randrange(size // 5, size * 9 // 10) if sig is None else 0
        proc = child(src, out, False, limit, args)
        wait_started(proc)
        if sig is not None:
            time.sleep(rng.uniform(0, duration))
            proc.send_signal(sig)
        said, err = proc.communicate(timeout=120)
        tally = counts[kind]
        tally[f"exit {proc.returncode}"] += 1
        tally["partial playable" if playable(partial_path_for(out)) else "no partial"] += 1
        if sig is None:
            full = "file-size limit is reached" in said + err
            tally["said disk/limit full" if full else "no disk sentence"] += 1
        resumes = 0
        while not (out.exists() and not partial_path_for(out).parent.exists()) and resumes < 5:
            resumes += 1
            again = child(src, out, True, 0, args)
            wait_started(again)
            if again.wait(timeout=120) != 0:
                tally["resume failed"] += 1
        tally[f"finished after {resumes} resume(s)"] += 1
        got = frame_hashes(out) if out.exists() else []
        tally["same frames and timestamps" if [p for p, _ in got] == [p for p, _ in want] else "FRAMES DIFFER"] += 1
        tally["same pixels" if got == want else "other pixels"] += 1
        print(f"{n + 1:2d}/{len(cases)} {kind:7s} exit {proc.returncode:4d} resumes {resumes}", flush=True)
    print(f"\n{len(cases)} interruptions ({args.each} per signal, {args.limits} file-size limits), "
          f"{args.frames} frames, {args.codec}, segments of {args.segment}:")
    for kind, tally in counts.items():
        print(f"  {kind:7s} " + ", ".join(f"{key}: {value}" for key, value in sorted(tally.items())))


if __name__ == "__main__":
    main()
