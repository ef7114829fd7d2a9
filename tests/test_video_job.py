"""Batch video job: timing/audio preservation, geometry, failures, interruption + resume, Ray.

Processors here are tiny and deterministic; the job never imports the diffusion pipeline.
They are top-level classes so Ray can pickle them.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from livediff.app.video.batch import plan_outputs, process_many
from livediff.app.video.codecs import resolve_codec
from livediff.app.video.geometry import plan_geometry, suggest_working_size
from livediff.app.video.job import process_video
from livediff.app.video.options import JobOptions
from livediff.app.video.processor import FrameProcessor
from livediff.app.video.reader import VideoReader, count_video_packets
from livediff.app.video.results import BatchResult
from livediff.app.video.workarea import partial_path_for, work_dir_for
from livediff.app.video.writer import VideoWriter
from livediff.errors import ConfigError, InputError, ModelNotAvailableError
from media import clip_frame, make_clip, probe, read_frames


# ---------------------------------------------------------------------------------- processors

class Invert:
    """Stateless: 255 - x."""

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return 255 - rgb

    def reset(self) -> None:
        pass


class Delay:
    """Stateful: returns the previous input (the first frame returns itself) — like a stream
    batch's latency. A missing reset or a resume without warm-up shows up as a shifted frame."""

    def __init__(self) -> None:
        self.prev: np.ndarray | None = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        out = rgb if self.prev is None else self.prev
        self.prev = rgb.copy()
        return out

    def reset(self) -> None:
        self.prev = None


class Sized(Invert):
    """Declares a working size and checks it gets exactly that."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.seen: list[tuple[int, ...]] = []

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        assert rgb.shape == (self.height, self.width, 3), rgb.shape
        self.seen.append(rgb.shape)
        return super().__call__(rgb)


class _Failing(Delay):
    def __init__(self, after: int, exc: type[BaseException]) -> None:
        super().__init__()
        self.after, self.exc, self.calls = after, exc, 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.calls >= self.after:
            raise self.exc(f"simulated failure after {self.after} frames")
        self.calls += 1
        return super().__call__(rgb)


class FailAfter:
    """Factory of a Delay processor that raises ``exc`` on frame number ``after``."""

    def __init__(self, after: int, exc: type[BaseException] = KeyboardInterrupt) -> None:
        self.after, self.exc = after, exc

    def __call__(self) -> FrameProcessor:
        return _Failing(self.after, self.exc)


def never_called() -> FrameProcessor:
    raise AssertionError("the processor should not be built")


def cannot_build() -> FrameProcessor:
    raise ModelNotAvailableError("model 'nope' is not available offline")


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------------------------- basics

def test_keeps_frame_count_timing_and_audio(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=20, size=(64, 48), fps=15)
    result = process_video(src, tmp_path / "out.mp4", Invert, JobOptions(progress=False, segment_frames=6))

    assert result.status == "done" and result.frames == 20
    p_in, p_out = probe(src), probe(tmp_path / "out.mp4")
    assert p_out["frames"] == 20
    assert p_out["fps"] == p_in["fps"] == 15
    assert p_out["time_base"] == p_in["time_base"]
    assert p_out["pts"] == p_in["pts"]  # exact timing, across 4 segments
    assert p_out["size"] == (64, 48)
    assert p_out["audio"] == "aac"  # remuxed, not dropped
    assert p_out["audio_seconds"] == pytest.approx(p_in["audio_seconds"], abs=1e-3)
    for i, frame in enumerate(read_frames(tmp_path / "out.mp4")):
        assert mean_diff(frame, 255 - clip_frame(i, 64, 48)) < 6
    assert not work_dir_for(tmp_path / "out.mp4").exists()  # parts cleaned up


def test_reader_metadata_and_writer_roundtrip(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=10, size=(64, 48), fps=12)
    with VideoReader(src) as reader:
        assert reader.size == (64, 48) and reader.fps == 12 and reader.frame_count == 10
        assert reader.has_audio and reader.audio_codec == "aac"
        frames = list(reader.frames())
    assert [f.index for f in frames] == list(range(10))
    assert frames[1].time == pytest.approx(1 / 12)
    with VideoWriter(tmp_path / "w.mp4", width=64, height=48, fps=12, time_base=reader.time_base, audio_from=src) as w:
        for f in frames:
            w.write(f.rgb, f.pts)
    p = probe(tmp_path / "w.mp4")
    assert p["frames"] == 10 and p["fps"] == 12 and p["audio"] == "aac"
    assert resolve_codec(None) == "libx264"


def test_odd_size_pcm_audio_and_working_size(tmp_path):
    src = make_clip(tmp_path / "odd.mkv", n_frames=12, size=(63, 47), fps=10, audio="pcm_s16le")
    out = tmp_path / "odd.mp4"
    process_video(src, out, Invert, JobOptions(progress=False))
    p = probe(out)
    assert p["size"] == (62, 46)  # even for yuv420p: last column/row dropped
    assert p["frames"] == 12 and p["fps"] == 10
    assert p["audio"] == "aac"  # PCM is transcoded for MP4 players
    first = read_frames(out)[0]
    assert mean_diff(first, 255 - clip_frame(0, 63, 47)[:46, :62]) < 6

    sized = Sized(32, 32)
    process_video(src, tmp_path / "sized.mp4", lambda: sized, JobOptions(progress=False))
    assert len(sized.seen) == 12
    assert probe(tmp_path / "sized.mp4")["size"] == (46, 46)  # centre square of 47x47 at input scale


def test_geometry_rules():
    g = plan_geometry((320, 240), (256, 256), "crop")
    assert g.region == (40, 0, 240, 240) and g.output_size == (240, 240)
    assert g.to_processor(np.zeros((240, 320, 3), np.uint8)).shape == (256, 256, 3)
    assert g.to_output(np.zeros((256, 256, 3), np.uint8)).shape == (240, 240, 3)

    assert suggest_working_size(1920, 1080) == (512, 288)
    g = plan_geometry((1920, 1080), (512, 288), "crop")
    assert g.output_size == (1920, 1080)  # aspect within 2 %: input size kept

    g = plan_geometry((320, 240), (256, 256), "stretch")
    assert g.region == (0, 0, 320, 240) and g.output_size == (320, 240)
    g = plan_geometry((63, 47), None)
    assert g.output_size == (62, 46) and g.to_processor(np.zeros((47, 63, 3), np.uint8)).shape == (47, 63, 3)
    with pytest.raises(ConfigError):
        plan_geometry((64, 48), (32, 32), "squash")  # type: ignore[arg-type]


def test_codec_and_quality_options(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=6, audio=False)
    process_video(src, tmp_path / "m4.mp4", Invert, JobOptions(codec="mpeg4", quality="500k", progress=False))
    p = probe(tmp_path / "m4.mp4")
    assert p["frames"] == 6 and p["audio"] is None
    with VideoReader(tmp_path / "m4.mp4") as r:
        assert r.video_codec == "mpeg4"
    with pytest.raises(ConfigError, match="nope"):
        process_video(src, tmp_path / "x.mp4", Invert, JobOptions(codec="nope", progress=False))
    with pytest.raises(ConfigError, match="CRF"):
        process_video(src, tmp_path / "x.mp4", Invert, JobOptions(codec="mpeg4", quality=23, progress=False))
    with pytest.raises(ConfigError, match="output"):
        process_video(src, tmp_path / "x.avi", Invert, JobOptions(progress=False))


# ---------------------------------------------------------------------------------- failures

def test_corrupt_inputs_reported_while_good_one_finishes(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "good.mp4", n_frames=10)
    (folder / "bad.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    whole = make_clip(tmp_path / "whole.mp4", n_frames=10).read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "notes.txt").write_text("not a video, ignored by the folder scan")

    results = process_many([folder, tmp_path / "missing.mp4"], tmp_path / "out", Invert, JobOptions(progress=False))

    by_name = {r.input_path.name: r for r in results}
    assert set(by_name) == {"good.mp4", "bad.mp4", "truncated.mp4", "missing.mp4"}
    assert by_name["good.mp4"].status == "done" and probe(tmp_path / "out" / "good.mp4")["frames"] == 10
    for name in ("bad.mp4", "truncated.mp4", "missing.mp4"):
        assert by_name[name].status == "failed"
        assert name in by_name[name].error
        assert not (tmp_path / "out" / name).exists()
    assert isinstance(results, BatchResult) and len(results.failed) == 3 and results.exit_code == 1
    err = capsys.readouterr().err
    assert "bad.mp4" in err and "truncated.mp4" in err and "3 failed" in err

    with pytest.raises(InputError, match="bad.mp4"):
        process_video(folder / "bad.mp4", tmp_path / "x.mp4", Invert, JobOptions(progress=False))


def test_processor_that_cannot_be_built_stops_the_batch(tmp_path):
    make_clip(tmp_path / "a.mp4", n_frames=4, audio=False)
    with pytest.raises(ModelNotAvailableError):
        process_many([tmp_path / "a.mp4"], tmp_path / "out", cannot_build, JobOptions(progress=False))


# ---------------------------------------------------------------------------------- interruption

def test_interrupt_leaves_playable_output_and_resume_completes(tmp_path):
    # 128x96: libx264 in this build is not bit-reproducible below ~100 px (asm + mbtree), and this
    # test compares with a reference run
    w, h = 128, 96
    src = make_clip(tmp_path / "in.mp4", n_frames=20, size=(w, h), fps=15)
    ref_out, out = tmp_path / "ref.mp4", tmp_path / "out.mp4"
    process_video(src, ref_out, Delay, JobOptions(segment_frames=5, progress=False))

    with pytest.raises(KeyboardInterrupt):
        process_video(src, out, FailAfter(13, KeyboardInterrupt), JobOptions(segment_frames=5, progress=False))
    assert not out.exists()  # the output's name only ever holds a finished file
    partial = probe(partial_path_for(out))  # playable right away
    assert partial["frames"] == 13
    assert partial["pts"] == probe(ref_out)["pts"][:13]
    assert partial["audio"] == "aac" and partial["audio_seconds"] == pytest.approx(13 / 15, abs=0.06)
    assert work_dir_for(out).is_dir()

    result = process_video(src, out, Delay, JobOptions(segment_frames=5, resume=True, progress=False))
    assert result.resumed_frames == 13 and result.frames == 20
    p, ref = probe(out), probe(ref_out)
    assert p["frames"] == ref["frames"] == 20 and p["pts"] == ref["pts"] and p["fps"] == ref["fps"]
    assert p["audio_seconds"] == pytest.approx(ref["audio_seconds"], abs=1e-3)
    got, want = read_frames(out), read_frames(ref_out)
    diffs = [round(mean_diff(a, b), 2) for a, b in zip(got, want)]
    assert diffs[:10] == [0.0] * 10, diffs  # the two segments written identically are identical
    assert max(diffs) < 2.5, diffs  # the rest went through the encoder with other segment bounds
    # warm-up re-fed frames 5..12, so the stateful Delay continues exactly: output 13 = input 12
    # (codec noise against the synthetic frames is ~3, the one-frame shift ~13)
    assert mean_diff(got[13], clip_frame(12, w, h)) < 6 < mean_diff(got[13], clip_frame(13, w, h))
    assert not work_dir_for(out).exists() and not partial_path_for(out).exists()


def test_crash_keeps_partial_and_resume_reverifies_segments(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=20, fps=15)
    out = tmp_path / "out.mp4"
    results = process_many([src], out, FailAfter(7, RuntimeError), JobOptions(segment_frames=5, progress=False, quiet=True))
    (r,) = results
    assert r.status == "failed" and r.partial == partial_path_for(out) and r.frames == 7
    assert "in.mp4" in r.error and "simulated" in r.error and "--resume" in r.describe()
    assert probe(r.partial)["frames"] == 7 and not out.exists()

    # damage the last segment: resume must notice and redo its frames
    segments = sorted(work_dir_for(out).glob("seg_*.mp4"))
    assert [count_video_packets(s) for s in segments] == [5, 2]
    segments[-1].write_bytes(segments[-1].read_bytes()[:100])
    (r,) = process_many([src], out, Delay, JobOptions(segment_frames=5, resume=True, progress=False, quiet=True))
    assert r.status == "done" and r.resumed_frames == 5 and r.frames == 20
    assert probe(out)["frames"] == 20

    # a finished output is skipped on resume, without building a processor
    (r,) = process_many([src], out, never_called, JobOptions(resume=True, progress=False, quiet=True))
    assert r.status == "skipped"
    # with overwrite, leftover parts are discarded and the file is redone
    (r,) = process_many([src], out, Invert, JobOptions(overwrite=True, progress=False, quiet=True))
    assert r.status == "done" and r.resumed_frames == 0


# ---------------------------------------------------------------------------------- many files

def test_plan_outputs(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("in/a.mp4", "in/sub/b.mov", "in/.hidden.mp4", "c.mkv"):
        (tmp_path / name).write_bytes(b"x")
    pairs = plan_outputs([tmp_path / "in", tmp_path / "c.mkv"], tmp_path / "out")
    assert [(s.relative_to(tmp_path).as_posix(), d.relative_to(tmp_path).as_posix()) for s, d in pairs] == [
        ("in/a.mp4", "out/a.mp4"),
        ("in/sub/b.mov", "out/sub/b.mp4"),
        ("c.mkv", "out/c.mp4"),
    ]
    assert plan_outputs(tmp_path / "c.mkv", tmp_path / "x.mov") == [(tmp_path / "c.mkv", tmp_path / "x.mov")]
    with pytest.raises(ConfigError, match="folder"):
        plan_outputs([tmp_path / "in", tmp_path / "c.mkv"], tmp_path / "x.mp4")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.mov").write_bytes(b"x")
    with pytest.raises(ConfigError, match="both"):
        plan_outputs([tmp_path / "in", tmp_path / "d"], tmp_path / "out")


def test_missing_ray_is_a_config_error(tmp_path, monkeypatch):
    make_clip(tmp_path / "a.mp4", n_frames=3, audio=False)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"livediff\[ray\]"):
        process_many([tmp_path / "a.mp4"], tmp_path / "out", Invert, JobOptions(progress=False), workers=2)


def test_ray_two_workers_match_sequential(tmp_path, capfd):
    pytest.importorskip("ray")
    folder = tmp_path / "in"
    folder.mkdir()
    for n, name in ((12, "a.mp4"), (16, "b.mp4"), (9, "c.mp4")):
        make_clip(folder / name, n_frames=n, size=(128, 96), fps=15)  # >= 100 px: x264 is reproducible

    seq = process_many(folder, tmp_path / "seq", Delay, JobOptions(segment_frames=5, progress=False, quiet=True))
    par = process_many(folder, tmp_path / "par", Delay, JobOptions(segment_frames=5, progress=False, quiet=True),
                       workers=2)
    assert "Token authentication" not in capfd.readouterr().err  # Ray's notice is not the user's business

    assert [r.status for r in seq] == [r.status for r in par] == ["done"] * 3
    assert [r.input_path for r in seq] == [r.input_path for r in par]
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        a, b = probe(tmp_path / "seq" / name), probe(tmp_path / "par" / name)
        assert a["frames"] == b["frames"] and a["pts"] == b["pts"] and a["audio"] == b["audio"] == "aac"
        for x, y in zip(read_frames(tmp_path / "seq" / name), read_frames(tmp_path / "par" / name)):
            assert mean_diff(x, y) < 0.1
