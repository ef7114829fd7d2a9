"""Batch video job data safety: a finished output is never lost or silently mixed, damaged parts
and inputs are noticed, and unusable outputs or inputs are refused before any work."""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from livediff.app.video.batch import process_many
from livediff.app.video.job import DiskFullError, process_video
from livediff.app.video.options import JobOptions
from livediff.app.video.workarea import partial_path_for, work_dir_for
from livediff.app.video.writer import VideoWriter
from livediff.errors import ConfigError, InputError
from media import clip_frame, make_clip, probe

QUIET: dict[str, Any] = dict(progress=False, quiet=True)


class Tinted:
    """A stateless processor whose output depends on a setting, and which says so (`identity`)."""

    def __init__(self, tint: int, stop_after: int | None = None):
        self.tint, self.stop_after, self.calls = tint, stop_after, 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return np.clip(rgb.astype(np.int16) + self.tint, 0, 255).astype(np.uint8)

    def reset(self) -> None:
        pass

    def identity(self) -> dict:
        return {"tint": self.tint}


class TintedFactory:
    def __init__(self, tint: int, stop_after: int | None = None):
        self.tint, self.stop_after = tint, stop_after

    def __call__(self) -> Tinted:
        return Tinted(self.tint, self.stop_after)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_existing_output_is_not_replaced_unasked(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=12)
    out = tmp_path / "out.mp4"
    process_video(src, out, TintedFactory(10), JobOptions(**QUIET))
    with pytest.raises(ConfigError, match=r"out.mp4 already exists; pass --overwrite .* or --resume"):
        process_video(src, out, TintedFactory(20), JobOptions(**QUIET))
    with pytest.raises(ConfigError, match="already exists"):
        process_many([src], out, TintedFactory(20), JobOptions(**QUIET))


def test_an_interrupted_overwrite_leaves_the_finished_output_untouched(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=30)
    out = tmp_path / "out.mp4"
    process_video(src, out, TintedFactory(10), JobOptions(**QUIET))
    finished = digest(out)
    with pytest.raises(KeyboardInterrupt):
        process_video(src, out, TintedFactory(40, stop_after=17), JobOptions(overwrite=True, segment_frames=5,
                                                                             **QUIET))
    assert digest(out) == finished and probe(out)["frames"] == 30
    assert probe(partial_path_for(out))["frames"] == 17
    process_video(src, out, TintedFactory(40), JobOptions(overwrite=True, **QUIET))
    assert digest(out) != finished and not partial_path_for(out).exists()


def test_resume_refuses_other_settings_and_names_them(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=30)
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        process_video(src, out, TintedFactory(10, stop_after=12), JobOptions(segment_frames=5, **QUIET))
    with pytest.raises(ConfigError, match=r"cannot resume .*in.mp4: the settings differ .*--tint: 10 → 20"):
        process_video(src, out, TintedFactory(20), JobOptions(resume=True, segment_frames=5, **QUIET))
    assert work_dir_for(out).is_dir()  # the interrupted run is still there to be resumed properly
    result = process_video(src, out, TintedFactory(10), JobOptions(resume=True, segment_frames=5, **QUIET))
    assert result.resumed_frames == 12 and result.frames == 30


def test_a_rerun_without_resume_keeps_an_interrupted_runs_frames_and_says_how_to_go_on(tmp_path):
    """Before, a rerun without --resume silently discarded the interrupted run's finished frames."""
    src = make_clip(tmp_path / "in.mp4", n_frames=30)
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        process_video(src, out, TintedFactory(10, stop_after=12), JobOptions(segment_frames=5, **QUIET))
    with pytest.raises(ConfigError, match=r"out.mp4 has an interrupted run with 12 frames done \(in .*\); pass "
                                          r"--resume to continue it or --overwrite to start over"):
        process_video(src, out, TintedFactory(10), JobOptions(segment_frames=5, **QUIET))
    result = process_video(src, out, TintedFactory(10), JobOptions(resume=True, segment_frames=5, **QUIET))
    assert result.resumed_frames == 12 and result.frames == 30


def test_a_changed_setting_is_named_as_the_option_the_user_typed():
    from livediff.app.video.segments import differences

    before = {"processor": {"prompt": {"prompt": "oil"}, "pipeline": {"t_index_list": [32, 45], "bank": {"max_frames": 4}},
                            "weights": {"unet": "a"}}, "input": {"sha256": "x"}, "encode": {"work": [256, 192]}}
    now = {"processor": {"prompt": {"prompt": "watercolor"}, "pipeline": {"t_index_list": [20, 45], "bank": {"max_frames": 2}},
                         "weights": {"unet": "b"}}, "input": {"sha256": "y"}, "encode": {"work": [512, 384]}}
    assert sorted(differences(before, now)) == sorted([
        "--prompt: 'oil' → 'watercolor'", "--t-index-list: [32, 45] → [20, 45]",
        "the feature bank's max frames: 4 → 2", "the unet weights: 'a' → 'b'", "the input video's sha256: 'x' → 'y'",
        "--width/--height: [256, 192] → [512, 384]"])


def test_the_pipeline_identity_covers_prompt_seed_steps_and_weights():
    from livediff.app.video.processor import PipelineFactory

    base = dict(model="tiny", mode="video", width=64, height=64, device="cpu", dtype="float32")
    first = PipelineFactory(settings={**base, "seed": 1}, prompt=dict(prompt="oil painting"))().identity()
    other = PipelineFactory(settings={**base, "seed": 2, "t_index_list": (20, 40)},
                            prompt=dict(prompt="watercolor"))().identity()
    assert first["weights"] == other["weights"] and len(first["weights"]["unet"]) == 32
    assert first["prompt"] != other["prompt"]
    assert first["pipeline"]["seed"] != other["pipeline"]["seed"]
    assert first["live"]["t_index_list"] != other["live"]["t_index_list"]
    assert {"model", "vae", "loras", "mode", "cfg_type", "bank", "token_merge_ratio", "dtype",
            "accelerator"} <= set(first["pipeline"])


def test_a_damaged_segment_of_the_same_size_is_redone_on_resume(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=20)
    out = tmp_path / "out.mp4"
    with pytest.raises(KeyboardInterrupt):
        process_video(src, out, TintedFactory(10, stop_after=12), JobOptions(segment_frames=5, **QUIET))
    second = sorted(work_dir_for(out).glob("seg_*.mp4"))[1]
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same packet count: only the checksum can tell
    second.write_bytes(bytes(data))
    result = process_video(src, out, TintedFactory(10), JobOptions(resume=True, segment_frames=5, **QUIET))
    assert result.resumed_frames == 5 and result.frames == 20


def test_a_truncated_input_with_an_intact_index_is_a_failure_with_the_counts(tmp_path):
    src = tmp_path / "in.mp4"
    with VideoWriter(src, width=64, height=48, fps=15, faststart=True) as writer:  # index at the front
        for i in range(60):
            writer.write(clip_frame(i, 64, 48))
    src.write_bytes(src.read_bytes()[: int(src.stat().st_size * 0.6)])
    out = tmp_path / "out.mp4"
    (result,) = process_many([src], out, TintedFactory(0), JobOptions(segment_frames=10, **QUIET))
    assert result.status == "failed" and "of its 60 frames could be decoded" in result.error
    assert "resuming cannot help" in result.describe() and not out.exists()
    assert not work_dir_for(out).exists()


def test_an_output_folder_that_cannot_be_made_is_one_sentence_before_any_work(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=4)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot write outputs to .*file/sub"):
        process_many([src], tmp_path / "file" / "sub" / "out.mp4", TintedFactory(0), JobOptions(**QUIET))


def test_an_image_named_like_a_video_is_refused(tmp_path):
    from PIL import Image

    fake = tmp_path / "photo.mp4"
    Image.new("RGB", (64, 48), (200, 10, 10)).save(fake, format="PNG")
    with pytest.raises(InputError, match=r"photo.mp4: is a single png image, not a video; .*livediff img2img"):
        process_video(fake, tmp_path / "out.mp4", TintedFactory(0), JobOptions(**QUIET))


def test_resume_and_overwrite_together_are_refused():
    with pytest.raises(ConfigError, match="choose one"):
        JobOptions(resume=True, overwrite=True)


class MuxFault:
    """A segment writer's output container whose first ``mux`` raises ``error``: the point of
    `VideoWriter.write` where the encoder has taken a frame and its packets are not muxed yet."""

    def __init__(self, container, error: BaseException):
        self.container, self.error = container, error

    def mux(self, packet) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        self.container.mux(packet)

    def __getattr__(self, name: str):
        return getattr(self.container, name)


def fail_first_mux_in_write(monkeypatch, error: BaseException) -> None:
    """Raise ``error`` at the first packet muxed from inside `VideoWriter.write` (x264 emits its
    first packet at the 42nd frame, so this lands mid-segment, not in the closing flush)."""
    write = VideoWriter.write

    def faulty_write(self, rgb, pts=None):
        if error is not None and not isinstance(self._out, MuxFault):
            self._out = MuxFault(self._out, error)
        try:
            write(self, rgb, pts)
        finally:
            if isinstance(self._out, MuxFault) and self._out.error is None:
                self._out = self._out.container
                monkeypatch.setattr(VideoWriter, "write", write)

    monkeypatch.setattr(VideoWriter, "write", faulty_write)


@pytest.mark.parametrize("error, raised", [
    (KeyboardInterrupt(), KeyboardInterrupt),
    (OSError(errno.ENOSPC, "No space left on device"), DiskFullError),
], ids=["ctrl-c", "disk-full"])
def test_a_segment_cut_inside_the_encoder_is_redone_and_resume_finishes(tmp_path, monkeypatch, error, raised):
    src = make_clip(tmp_path / "in.mp4", n_frames=60, size=(64, 64), fps=15, audio=False)
    out = tmp_path / "out.mp4"
    options = JobOptions(segment_frames=50, **QUIET)
    fail_first_mux_in_write(monkeypatch, error)
    with pytest.raises(raised) as stopped:
        process_video(src, out, TintedFactory(10), options)
    if raised is DiskFullError:
        assert str(stopped.value) == (f"{src}: the disk is full or the file-size limit is reached (No space left on "
                                      f"device) while writing {out}; free space (or raise the limit) and run again "
                                      f"with --resume")
    assert not list(work_dir_for(out).glob("seg_*.mp4"))  # the cut segment was not trusted
    for _ in range(2):  # a resume never fails for good: again and again it finishes
        result = process_video(src, out, TintedFactory(10), JobOptions(resume=True, segment_frames=50, **QUIET))
        assert result.status in ("done", "skipped")
    assert probe(out)["frames"] == 60 and probe(out)["pts"] == probe(src)["pts"]


def test_a_file_size_limit_is_reported_and_resume_finishes(tmp_path):
    """A real `ulimit -f`: the kernel's SIGXFSZ would kill the run; it is ignored, the write fails
    with EFBIG and the run says so in one sentence."""
    src = make_clip(tmp_path / "in.mp4", n_frames=60, size=(64, 64), fps=15, audio=False)
    out = tmp_path / "out.mp4"
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))
        from livediff.app.video.job import DiskFullError, process_video
        from livediff.app.video.options import JobOptions
        from test_job_safety import TintedFactory
        try:
            process_video({str(src)!r}, {str(out)!r}, TintedFactory(10), JobOptions(segment_frames=10, progress=False))
        except DiskFullError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr
    assert "the disk is full or the file-size limit is reached (File too large)" in run.stdout
    result = process_video(src, out, TintedFactory(10), JobOptions(resume=True, segment_frames=10, **QUIET))
    assert result.resumed_frames > 0 and probe(out)["pts"] == probe(src)["pts"]


def test_no_file_the_run_did_not_create_is_deleted_or_overwritten(tmp_path):
    src = make_clip(tmp_path / "clip.mp4", n_frames=12, size=(64, 64), audio=False)
    earlier = tmp_path / "out" / "clip.partial.mp4"  # a finished output that looks like a work file
    process_video(src, earlier, TintedFactory(30), JobOptions(**QUIET))
    kept = digest(earlier)
    out = tmp_path / "out" / "clip.mp4"
    with pytest.raises(KeyboardInterrupt):
        process_video(src, out, TintedFactory(10, stop_after=7), JobOptions(segment_frames=5, **QUIET))
    assert digest(earlier) == kept and probe(partial_path_for(out))["frames"] == 7
    process_video(src, out, TintedFactory(10), JobOptions(resume=True, segment_frames=5, **QUIET))
    assert digest(earlier) == kept and probe(out)["frames"] == 12 and not work_dir_for(out).exists()

    user_file = work_dir_for(tmp_path / "out" / "other.mp4")
    user_file.write_text("mine")
    with pytest.raises(ConfigError, match=r"\.other\.mp4\.livediff exists and is not livediff's work folder for "
                                          r".*other\.mp4; move it away"):
        process_video(src, tmp_path / "out" / "other.mp4", never_built, JobOptions(**QUIET))
    assert user_file.read_text() == "mine"


def never_built():
    raise AssertionError("the processor should not be built")


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    src = make_clip(tmp_path / "in.mp4", n_frames=4, size=(64, 64), audio=False)
    out = tmp_path / "out.mp4"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    work_dir_for(out).mkdir()
    (work_dir_for(out) / "lock").write_text(dead.stdout.strip())
    assert process_video(src, out, TintedFactory(0), JobOptions(**QUIET)).frames == 4
    assert not work_dir_for(out).exists()
