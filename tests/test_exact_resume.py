"""A batch job interrupted and resumed (several times) with the video pipeline writes exactly the
frames of an uninterrupted run: the stream state is saved with every segment and loaded on resume.
Lossless output (FFV1 in .mkv) and per-frame hashes of the decoded output."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import av
import pytest

from livediff.app.video.job import process_video
from livediff.app.video.options import JobOptions
from livediff.app.video.processor import PipelineFactory
from livediff.app.video.workarea import work_dir_for
from media import make_clip

FRAMES = 22
SEGMENT = 4
OPTIONS: dict[str, Any] = dict(codec="ffv1", segment_frames=SEGMENT, progress=False, quiet=True)


class Stopping:
    """A processor that is interrupted (KeyboardInterrupt) inside its frame number `stop_after`."""

    def __init__(self, processor, stop_after: int | None):
        self.processor, self.stop_after, self.calls = processor, stop_after, 0

    def __call__(self, rgb):
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.processor(rgb)

    def reset(self) -> None:
        self.processor.reset()

    def __getattr__(self, name: str):
        return getattr(self.processor, name)


class StoppingFactory:
    def __init__(self, factory: PipelineFactory, stop_after: int | None = None):
        self.factory, self.stop_after = factory, stop_after

    def __call__(self) -> Stopping:
        return Stopping(self.factory(), self.stop_after)


def frame_hashes(path: Path) -> list[str]:
    with av.open(str(path)) as container:
        return [hashlib.sha256(f.to_ndarray(format="rgb24").tobytes()).hexdigest()
                for f in container.decode(container.streams.video[0])]


def manifest(out: Path) -> dict:
    return json.loads((work_dir_for(out) / "manifest.json").read_text())


@pytest.mark.parametrize("bank", [dict(merge=False, max_frames=2, cache_interval=3),
                                  dict(merge=True, max_frames=1, cache_interval=1)], ids=["fifo", "merged"])
def test_a_resumed_video_job_writes_the_frames_of_an_uninterrupted_run(tmp_path, bank):
    src = make_clip(tmp_path / "in.mkv", n_frames=FRAMES, size=(64, 64), audio=False, codec="ffv1")
    factory = PipelineFactory(settings=dict(model="tiny", mode="video", t_index_list=[20, 35], width=64, height=64,
                                            device="cpu", dtype="float32", seed=5, bank=bank),
                              prompt=dict(prompt="oil painting", guidance_scale=1.0))
    process_video(src, tmp_path / "whole.mkv", factory, JobOptions(**OPTIONS))
    whole = frame_hashes(tmp_path / "whole.mkv")
    assert len(whole) == FRAMES and len(set(whole)) > FRAMES // 2  # not a still picture

    out = tmp_path / "out.mkv"
    with pytest.raises(KeyboardInterrupt):  # inside frame 6: frames 0-3 closed with a state, 4-5 without
        process_video(src, out, StoppingFactory(factory, stop_after=6), JobOptions(**OPTIONS))
    assert [(s["first"], s["state"] is not None) for s in manifest(out)["segments"]] == [(0, True), (4, False)]
    with pytest.raises(KeyboardInterrupt):  # resumes at 4; stopped inside frame 4 + 9 = 13
        process_video(src, out, StoppingFactory(factory, stop_after=9), JobOptions(resume=True, **OPTIONS))
    segments = manifest(out)["segments"]
    assert [(s["first"], s["state"] is not None) for s in segments] == [(0, False), (4, True), (8, True), (12, False)]
    assert sorted(p.name for p in work_dir_for(out).glob("state_*.pt")) == ["state_000001.pt", "state_000002.pt"]
    newest = work_dir_for(out) / segments[2]["state"]
    damaged = bytearray(newest.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    newest.write_bytes(bytes(damaged))  # a damaged state: resume from the one before (frame 8)
    with pytest.raises(KeyboardInterrupt):
        process_video(src, out, StoppingFactory(factory, stop_after=7), JobOptions(resume=True, **OPTIONS))
    result = process_video(src, out, factory, JobOptions(resume=True, **OPTIONS))
    assert result.resumed_frames == 12 and result.frames == FRAMES
    assert frame_hashes(out) == whole


def test_a_resumed_causal_video_job_writes_the_frames_of_an_uninterrupted_run(tmp_path):
    """Chunks of 5, then 8 frames: a segment closes when a chunk comes out, with the state; Ctrl-C
    flushes the held frames into a segment without a state, made again on resume."""
    src = make_clip(tmp_path / "in.mkv", n_frames=FRAMES, size=(64, 64), audio=False, codec="ffv1")
    factory = PipelineFactory(settings=dict(model="tiny-wan-causal", mode="causal-video", width=64, height=64,
                                            device="cpu", dtype="float32", t_index_list=[20, 40], seed=7,
                                            causal=dict(chunk_frames=2, sink_chunks=1, window_chunks=1)),
                              prompt=dict(prompt="oil painting"))
    process_video(src, tmp_path / "whole.mkv", factory, JobOptions(**OPTIONS))
    whole = frame_hashes(tmp_path / "whole.mkv")
    assert len(whole) == FRAMES and len(set(whole)) > FRAMES // 2

    out = tmp_path / "out.mkv"
    for stop in (7, 10, 6):  # stopped inside frames 7, 5 + 10 = 15 and 13 + 6 = 19
        with pytest.raises(KeyboardInterrupt):
            process_video(src, out, StoppingFactory(factory, stop_after=stop), JobOptions(resume=True, **OPTIONS))
        segments = manifest(out)["segments"]
        assert segments[0]["first"] == 0 and segments[-1]["state"] is None  # Ctrl-C flushed the held frames
    result = process_video(src, out, factory, JobOptions(resume=True, **OPTIONS))
    assert result.resumed_frames == 13 and result.frames == FRAMES
    assert frame_hashes(out) == whole
