"""The batch video job: restyle whole video files frame by frame, safely and resumably.

The job knows nothing about diffusion. It is given a **processor factory**: a picklable callable
returning a :class:`FrameProcessor` (``processor(rgb) -> rgb`` plus ``reset()``). The real one is
:class:`PipelineFactory` (the livediff video pipeline); tests use tiny deterministic processors.
The factory, not a processor, is what callers pass, because a model must be built *where it runs*
(one per Ray worker) and only when there is work to do.

Entry points
------------
* :func:`process_video` — one input file → one output file.
* :func:`process_many` — files and/or folders → one file (single input) or a folder, sequentially
  with one processor reused across files, or on Ray with ``workers > 1`` / ``ray_address``.

Frame geometry (:func:`plan_geometry`)
--------------------------------------
A processor may declare a working size (``width``/``height`` attributes; diffusion models need
fixed multiples of 8). With ``resize="crop"`` (default) the job takes the largest centred region of
the input with the model's aspect ratio, scales it to the working size, and scales the result back
to that region's size in input pixels — nothing is ever distorted; if the model's aspect differs
from the input's by more than 2 %, the output is the cropped region (e.g. a 320x240 input with a
256x256 model gives 240x240). Within 2 % (the usual case when the working size is chosen from the
input's aspect, see :func:`suggest_working_size`) the output keeps the input size. With
``resize="stretch"`` the whole frame is squeezed to the working size and stretched back: output
size = input size, but the model sees a distorted picture. A processor without a working size gets
frames at input size. Output sizes are rounded down to even numbers (``yuv420p``), so an odd input
loses its last row/column.

Interruption safety and resume
------------------------------
Frames are encoded into fixed-size **segments** (``segment_frames`` each, default 120), each a
complete, closed MP4 in a hidden folder next to the output (``.NAME.parts/``), listed in a
``manifest.json`` written atomically after each segment closes. At the end the segments are
joined by remuxing (no re-encode) into the output together with the input's audio, and the folder
is removed. On ``KeyboardInterrupt`` or a crash mid-file the open segment is closed properly and
the finished segments are joined into the output at once (audio trimmed to the video), so the
output is always a playable file of every frame processed so far; the parts folder is kept. A hard
kill (SIGKILL, power loss) loses at most the open segment.

With ``resume=True`` the manifest is checked against the input (path, size, mtime) and the encode
settings, every listed segment is verified (opens, demuxes, has the recorded frame count; a bad one
and all after it are dropped), the frames they cover are decoded and skipped, and processing
continues. The output then has exactly the frame count of an uninterrupted run. Streaming
processors are stateful (stream batch, feature bank): after ``reset()`` the job re-feeds the last
``resume_warmup`` input frames before the resume point (outputs discarded), so a processor whose
state depends on a short history continues as if never stopped; longer-range state (e.g. a large
feature bank) restarts with that short history — acceptable for restyling. An output that exists
with no parts folder is treated as finished and skipped on resume.

Disk: the parts and the joined output exist side by side for a moment (≈2x the output size).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol, runtime_checkable

import numpy as np

from livediff.app.video_io import (
    VIDEO_EXTENSIONS,
    AudioMode,
    Quality,
    VideoReader,
    VideoWriter,
    concat_parts,
    count_video_packets,
    encoder_settings,
    resolve_codec,
)
from livediff.errors import ConfigError, InputError, LivediffError

log = logging.getLogger(__name__)

#: Frames per segment file: the most a hard kill can lose, and the keyframe spacing floor.
DEFAULT_SEGMENT_FRAMES = 120
#: Input frames re-fed to a fresh processor before the resume point.
DEFAULT_RESUME_WARMUP = 8
#: Output containers the job writes (H.264 + AAC fit all of them).
OUTPUT_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv"})

ResizeMode = Literal["crop", "stretch"]
JobStatus = Literal["done", "skipped", "failed"]
MANIFEST_NAME = "manifest.json"
_MANIFEST_VERSION = 1


# ------------------------------------------------------------------------------------------
# the processor contract
# ------------------------------------------------------------------------------------------

@runtime_checkable
class FrameProcessor(Protocol):
    """What the job drives, one frame at a time, in order.

    ``__call__`` takes an HxWx3 uint8 RGB frame and returns one of the same kind (any size: it is
    resized to the output size). ``reset()`` forgets all temporal state; the job calls it before
    every file. Optional ``width``/``height`` attributes (ints) declare the size the processor
    wants its input in; without them it receives frames at the input's size.
    """

    def __call__(self, rgb: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


#: Builds a processor. Must be picklable (a top-level class instance or a functools.partial of a
#: top-level function) when used with Ray; called once per worker, lazily.
ProcessorFactory = Callable[[], FrameProcessor]


class _PipelineProcessor:
    """Adapts a livediff video pipeline (``pipe(frame)``, ``pipe.reset()``) to :class:`FrameProcessor`."""

    def __init__(self, pipe: Any, width: int, height: int):
        self.pipe, self.width, self.height = pipe, width, height

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.pipe(rgb)

    def reset(self) -> None:
        self.pipe.reset()


@dataclass(frozen=True)
class PipelineFactory:
    """Picklable factory for a livediff pipeline, built in the process that runs it (one per Ray worker).

    ``settings`` are ``pipelines.load_pipeline`` keywords, ``prompt`` are ``prepare`` keywords;
    ``strength`` (optional) is applied with ``set_strength``. The job calls ``reset()`` between files.
    """

    settings: Mapping[str, Any]
    prompt: Mapping[str, Any]
    strength: float | None = None

    def __call__(self) -> FrameProcessor:
        from livediff.app.build_progress import BuildReporter
        from livediff.pipelines import load_pipeline  # heavy import, only where the model runs

        pipe = load_pipeline(**dict(self.settings), progress=BuildReporter())
        if self.strength is not None:
            pipe.set_strength(self.strength)
        pipe.prepare(**dict(self.prompt))
        return _PipelineProcessor(pipe, pipe.config.width, pipe.config.height)


def working_size(processor: Any) -> tuple[int, int] | None:
    """The processor's declared (width, height), or None if it takes any size."""
    w, h = getattr(processor, "width", None), getattr(processor, "height", None)
    if isinstance(w, (int, np.integer)) and isinstance(h, (int, np.integer)) and w > 0 and h > 0:
        return int(w), int(h)
    return None


def suggest_working_size(width: int, height: int, longest: int = 512, multiple: int = 8) -> tuple[int, int]:
    """A model size with the input's aspect ratio: longest side ``longest``, both sides multiples of
    ``multiple`` (e.g. 1920x1080 → 512x288). Using it keeps ``resize="crop"`` output at input size."""
    scale = longest / max(width, height)
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------

def _even(n: int) -> int:
    return max(2, n - n % 2)


def _resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    w, h = size
    if rgb.shape[1] == w and rgb.shape[0] == h:
        return rgb
    shrink = w * h < rgb.shape[0] * rgb.shape[1]
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


@dataclass(frozen=True)
class FrameGeometry:
    """How input frames become processor frames and processor frames become output frames."""

    input_size: tuple[int, int]
    work_size: tuple[int, int] | None
    output_size: tuple[int, int]
    #: (x, y, w, h): the input region the processor sees
    region: tuple[int, int, int, int]

    def to_processor(self, rgb: np.ndarray) -> np.ndarray:
        if self.work_size is None:
            return rgb
        x, y, w, h = self.region
        if (w, h) != self.input_size:
            rgb = rgb[y : y + h, x : x + w]
        return np.ascontiguousarray(_resize(rgb, self.work_size))

    def to_output(self, rgb: np.ndarray) -> np.ndarray:
        ow, oh = self.output_size
        if rgb.shape[0] == oh and rgb.shape[1] == ow:
            return rgb
        if self.work_size is None and rgb.shape[:2] == self.input_size[::-1]:
            return np.ascontiguousarray(rgb[:oh, :ow])  # odd input: drop the last row/column, no resampling
        return np.ascontiguousarray(_resize(rgb, (ow, oh)))


def plan_geometry(
    input_size: tuple[int, int],
    work_size: tuple[int, int] | None,
    resize: ResizeMode = "crop",
    tolerance: float = 0.02,
) -> FrameGeometry:
    """Decide region, processor size and output size (see the module docstring for the rules)."""
    if resize not in ("crop", "stretch"):
        raise ConfigError(f"resize mode {resize!r} is not one of crop, stretch")
    iw, ih = input_size
    full = (0, 0, iw, ih)
    even_input = (_even(iw), _even(ih))
    if work_size is None or resize == "stretch":
        return FrameGeometry(input_size, work_size, even_input, full)
    ww, wh = work_size
    aspect = Fraction(ww, wh)
    if Fraction(iw, ih) > aspect:
        ch, cw = ih, min(iw, max(1, round(ih * aspect)))
    else:
        cw, ch = iw, min(ih, max(1, round(iw / aspect)))
    region = ((iw - cw) // 2, (ih - ch) // 2, cw, ch)
    if cw >= iw * (1 - tolerance) and ch >= ih * (1 - tolerance):
        output = even_input
    else:
        output = (_even(cw), _even(ch))
    return FrameGeometry(input_size, work_size, output, region)


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------

@dataclass
class JobResult:
    """What happened to one input file (picklable; returned from Ray workers too)."""

    input_path: Path
    output_path: Path
    status: JobStatus
    #: frames in the output file (for a failed file: in the partial output, 0 if none)
    frames: int = 0
    #: frames taken over from an earlier interrupted run
    resumed_frames: int = 0
    seconds: float = 0.0
    #: one-line reason when status is "failed" (the message names the file)
    error: str | None = None
    #: True when a partial output was written for a failed file (re-run with resume=True)
    partial: bool = False

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def describe(self) -> str:
        if self.status == "failed":
            extra = f"; partial output with {self.frames} frames kept, resume to finish" if self.partial else ""
            return f"FAILED {self.input_path}: {self.error}{extra}"
        if self.status == "skipped":
            return f"skipped {self.input_path} (output {self.output_path} already finished)"
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.resumed_frames} resumed" if self.resumed_frames else ""
        return (
            f"done {self.input_path} -> {self.output_path} "
            f"({self.frames} frames{resumed}, {self.seconds:.1f} s, {fps:.1f} fps)"
        )


class BatchResult(list):
    """``list[JobResult]`` in input order, plus the overall status."""

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self if r.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def exit_code(self) -> int:
        """0 when every file succeeded (or was skipped), 1 otherwise — for the CLI."""
        return 0 if self.ok else 1

    def summary(self) -> str:
        done = sum(r.status == "done" for r in self)
        skipped = sum(r.status == "skipped" for r in self)
        text = f"{done} of {len(self)} files done"
        if skipped:
            text += f", {skipped} skipped"
        if self.failed:
            text += f", {len(self.failed)} failed: " + ", ".join(str(r.input_path) for r in self.failed)
        return text


# ------------------------------------------------------------------------------------------
# settings, parts folder and manifest
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Settings:
    codec: str | None
    quality: Quality
    audio: AudioMode
    resize: ResizeMode
    segment_frames: int
    resume: bool
    resume_warmup: int

    def validate(self) -> None:
        if self.segment_frames < 1:
            raise ConfigError(f"segment_frames {self.segment_frames} must be at least 1")
        if self.resume_warmup < 0:
            raise ConfigError(f"resume_warmup {self.resume_warmup} must be 0 or more")
        if self.audio not in ("auto", "copy", "aac", "none"):
            raise ConfigError(f"audio mode {self.audio!r} is not one of auto, copy, aac, none")
        if self.resize not in ("crop", "stretch"):
            raise ConfigError(f"resize mode {self.resize!r} is not one of crop, stretch")
        resolve_codec(self.codec)


def parts_dir_for(output: Path) -> Path:
    """The hidden folder holding the segments of ``output`` while it is being made."""
    return output.parent / f".{output.name}.parts"


@dataclass
class _Segment:
    file: str
    first: int  # index of its first frame in the input
    frames: int
    start: str  # exact start time in seconds, Fraction as "num/den"
    end: str  # end time of its last frame


def _input_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _load_resumable(parts: Path, identity: dict, resume: bool, emit: Callable[[str], None]) -> list[_Segment]:
    """Verified segments from an earlier run, or [] after clearing the folder for a fresh start."""
    if not parts.exists():
        return []
    segments: list[_Segment] = []
    if resume:
        try:
            manifest = json.loads((parts / MANIFEST_NAME).read_text())
            ok = manifest.get("version") == _MANIFEST_VERSION and manifest.get("identity") == identity
            if not ok:
                emit(
                    f"{identity['input']['path']}: not resuming, the input or the settings "
                    "changed since the parts were written"
                )
            else:
                expected = 0
                for entry in manifest.get("segments", []):
                    seg = _Segment(**entry)
                    if seg.first != expected or seg.frames < 1:
                        break
                    try:
                        if count_video_packets(parts / seg.file) != seg.frames:
                            break
                    except InputError:
                        break
                    segments.append(seg)
                    expected += seg.frames
        except (OSError, ValueError, TypeError, KeyError):
            emit(f"{parts}: unreadable manifest, starting over")
            segments = []
    keep = {s.file for s in segments}
    if not segments:
        shutil.rmtree(parts, ignore_errors=True)
        return []
    for child in parts.iterdir():  # stale half-written or unlisted segments
        if child.name not in keep and child.name != MANIFEST_NAME:
            child.unlink(missing_ok=True)
    return segments


def _save_manifest(parts: Path, identity: dict, segments: list[_Segment]) -> None:
    _write_json_atomic(
        parts / MANIFEST_NAME,
        {"version": _MANIFEST_VERSION, "identity": identity, "segments": [asdict(s) for s in segments]},
    )


def _assemble(
    parts: Path, segments: list[_Segment], output: Path, source: Path, audio: AudioMode, partial: bool
) -> int:
    """Join segments into ``output`` atomically (temp name, then rename); returns its frame count."""
    tmp = output.with_name(f".{output.stem}.joining{output.suffix}")
    until = float(Fraction(segments[-1].end)) if partial else None
    try:
        frames = concat_parts(
            [(parts / s.file, Fraction(s.start)) for s in segments],
            tmp,
            audio_from=source,
            audio=audio,
            audio_until=until,
        )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return frames


class _SegmentWriter:
    """One open segment: written under a temporary name, renamed when closed and complete."""

    def __init__(
        self, parts: Path, number: int, first: int, start_pts: int, reader: VideoReader, geom: FrameGeometry, s: _Settings
    ):
        self.name = f"seg_{number:06d}.mp4"
        self.tmp = parts / f"seg_{number:06d}.partial.mp4"
        self.parts = parts
        self.first = first
        self.start_pts = start_pts
        self.time_base = reader.time_base
        self.step = reader.frame_ticks()
        self.last_pts = start_pts
        self.writer = VideoWriter(
            self.tmp,
            width=geom.output_size[0],
            height=geom.output_size[1],
            fps=reader.fps,
            time_base=reader.time_base,
            codec=s.codec,
            quality=s.quality,
            faststart=False,
        )

    @property
    def frames(self) -> int:
        return self.writer.frames_written

    def write(self, rgb: np.ndarray, pts: int) -> None:
        self.writer.write(rgb, pts - self.start_pts)  # parts start at 0; concat adds the start back
        self.last_pts = pts

    def commit(self) -> _Segment | None:
        """Close; keep the file if it holds frames. Returns its manifest entry (None if empty)."""
        self.writer.close()
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.parts / self.name)
        start = Fraction(self.start_pts) * self.time_base
        end = Fraction(self.last_pts + self.step) * self.time_base
        return _Segment(self.name, self.first, self.frames, str(start), str(end))

    def discard(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# one file
# ------------------------------------------------------------------------------------------

class _LazyProcessor:
    """Builds the processor on first use and remembers a build failure (which aborts a batch)."""

    def __init__(self, factory: ProcessorFactory):
        self.factory = factory
        self.processor: FrameProcessor | None = None
        self.build_error: BaseException | None = None

    def get(self) -> FrameProcessor:
        if self.processor is None:
            try:
                processor = self.factory()
            except BaseException as exc:
                self.build_error = exc
                raise
            if not callable(processor) or not callable(getattr(processor, "reset", None)):
                self.build_error = TypeError(
                    f"processor factory {self.factory!r} returned {type(processor).__name__}, "
                    "which lacks __call__(rgb) and reset()"
                )
                raise self.build_error
            self.processor = processor
        return self.processor


def _check_output_frame(out: Any, processor: Any) -> np.ndarray:
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
        got = f"{out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        raise TypeError(f"processor {type(processor).__name__} must return an HxWx3 uint8 RGB array, got {got}")
    return out


class _StopRequested(KeyboardInterrupt):
    """Raised inside a file run when its ``should_stop`` says so (Ray workers, on the driver's
    Ctrl-C): handled exactly like a KeyboardInterrupt, i.e. the partial output is made playable."""


class _FileState:
    """What a file run has achieved so far, for the failure report."""

    def __init__(self) -> None:
        self.frames = 0
        self.resumed = 0
        self.partial = False


def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str, nested: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="frame",
        disable=not enabled,
        leave=not nested,
        position=1 if nested else None,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def _run_file(
    input_path: Path,
    output_path: Path,
    holder: _LazyProcessor,
    s: _Settings,
    state: _FileState,
    *,
    progress: bool,
    nested: bool,
    on_frame: Callable[[int, int | None], None] | None,
    emit: Callable[[str], None],
    should_stop: Callable[[], bool] | None = None,
) -> JobResult:
    t0 = time.perf_counter()
    parts = parts_dir_for(output_path)
    if s.resume and output_path.exists() and not parts.exists():
        try:  # finished earlier (a partial output always keeps its parts folder)
            return JobResult(input_path, output_path, "skipped", frames=count_video_packets(output_path))
        except InputError:
            pass  # unreadable: make it again
    with VideoReader(input_path) as reader:
        processor = holder.get()
        geom = plan_geometry(reader.size, working_size(processor), s.resize)
        codec = resolve_codec(s.codec)
        encoder_settings(codec, s.quality, *geom.output_size, reader.fps)  # fail before any work
        identity = {
            "input": _input_identity(input_path),
            "encode": {
                "codec": codec,
                "quality": s.quality,
                "size": list(geom.output_size),
                "work": list(geom.work_size) if geom.work_size else None,
                "region": list(geom.region),
                "time_base": str(reader.time_base),
            },
        }
        segments = _load_resumable(parts, identity, s.resume, emit)
        done = segments[-1].first + segments[-1].frames if segments else 0
        state.resumed = state.frames = done
        parts.mkdir(parents=True, exist_ok=True)
        if not segments:
            _save_manifest(parts, identity, segments)
        processor.reset()
        warm: deque[np.ndarray] | None = deque(maxlen=s.resume_warmup) if done and s.resume_warmup else None
        writer: _SegmentWriter | None = None
        total = reader.estimated_frames
        bar = _progress_bar(progress, total, min(done, total or done), input_path.name, nested)
        try:
            for frame in reader.frames():
                if should_stop is not None and should_stop():
                    raise _StopRequested(f"{input_path}: stopped")
                if frame.index < done:
                    if warm is not None and frame.index >= done - s.resume_warmup:
                        warm.append(frame.rgb)
                    continue
                if warm:
                    for rgb in warm:
                        _check_output_frame(processor(geom.to_processor(rgb)), processor)
                    warm = None
                if writer is None:
                    writer = _SegmentWriter(parts, len(segments), frame.index, frame.pts, reader, geom, s)
                out = _check_output_frame(processor(geom.to_processor(frame.rgb)), processor)
                writer.write(geom.to_output(out), frame.pts)
                state.frames += 1
                bar.update(1)
                if on_frame is not None:
                    on_frame(state.frames, total)
                if writer.frames >= s.segment_frames:
                    segment, writer = writer.commit(), None
                    if segment is not None:
                        segments.append(segment)
                        _save_manifest(parts, identity, segments)
        except BaseException:
            # Make what is done playable: close the open segment, join everything into the output.
            if writer is not None:
                try:
                    segment = writer.commit()
                    if segment is not None:
                        segments.append(segment)
                        _save_manifest(parts, identity, segments)
                except BaseException:
                    writer.discard()
                    state.frames = sum(seg.frames for seg in segments)
            if segments:
                try:
                    state.frames = _assemble(parts, segments, output_path, input_path, s.audio, partial=True)
                    state.partial = True
                except BaseException as exc:  # keep the original error; parts stay for resume
                    log.warning("%s: partial output not written (%s)", output_path, exc)
            raise
        finally:
            bar.close()
        if writer is not None:
            segment = writer.commit()
            if segment is not None:
                segments.append(segment)
                _save_manifest(parts, identity, segments)
        if not segments:
            raise InputError(f"{input_path}: no video frames decoded")
        frames = _assemble(parts, segments, output_path, input_path, s.audio, partial=False)
        shutil.rmtree(parts, ignore_errors=True)
    return JobResult(
        input_path, output_path, "done", frames=frames, resumed_frames=done, seconds=time.perf_counter() - t0
    )


def _process_file(
    input_path: Path,
    output_path: Path,
    holder: _LazyProcessor,
    s: _Settings,
    *,
    progress: bool,
    nested: bool = False,
    on_frame: Callable[[int, int | None], None] | None = None,
    emit: Callable[[str], None],
    should_stop: Callable[[], bool] | None = None,
) -> tuple[JobResult, Exception | None]:
    """Run one file; an ordinary error becomes a failed result (returned with the exception).

    KeyboardInterrupt/SystemExit and a processor that cannot be built propagate: the first stop
    the run, the second would fail every file the same way.
    """
    state = _FileState()
    t0 = time.perf_counter()
    try:
        result = _run_file(
            input_path, output_path, holder, s, state, progress=progress, nested=nested, on_frame=on_frame, emit=emit,
            should_stop=should_stop,
        )
        return result, None
    except _StopRequested:
        result = JobResult(
            input_path,
            output_path,
            "failed",
            frames=state.frames if state.partial else 0,
            resumed_frames=state.resumed,
            seconds=time.perf_counter() - t0,
            error=f"{input_path}: interrupted",
            partial=state.partial,
        )
        return result, None
    except Exception as exc:
        if holder.build_error is not None:
            raise
        if isinstance(exc, LivediffError):
            message = str(exc)
        else:
            message = f"{input_path}: {type(exc).__name__}: {exc}"
        if str(input_path) not in message:
            message = f"{input_path}: {message}"
        result = JobResult(
            input_path,
            output_path,
            "failed",
            frames=state.frames if state.partial else 0,
            resumed_frames=state.resumed,
            seconds=time.perf_counter() - t0,
            error=message,
            partial=state.partial,
        )
        return result, exc


def _emitter(quiet: bool) -> Callable[[str], None]:
    def emit(message: str) -> None:
        if not quiet:
            from tqdm import tqdm

            tqdm.write(f"livediff: {message}", file=sys.stderr)

    return emit


def _settings(codec, quality, audio, resize, segment_frames, resume, resume_warmup) -> _Settings:
    s = _Settings(codec, quality, audio, resize, int(segment_frames), bool(resume), int(resume_warmup))
    s.validate()
    return s


def process_video(
    input_path: str | Path,
    output_path: str | Path,
    processor_factory: ProcessorFactory,
    *,
    resume: bool = False,
    codec: str | None = None,
    quality: Quality = None,
    audio: AudioMode = "auto",
    resize: ResizeMode = "crop",
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    resume_warmup: int = DEFAULT_RESUME_WARMUP,
    progress: bool = True,
    on_frame: Callable[[int, int | None], None] | None = None,
    quiet: bool = False,
) -> JobResult:
    """Process one video file into ``output_path`` (a file; its suffix picks the container).

    ``codec``: encoder name, default libx264 (see :mod:`app.video_io`); ``quality``: CRF int for
    x264 (default 20) or a bitrate string like ``"4M"``; ``audio``: auto | copy | aac | none;
    ``resize``: crop | stretch (module docstring). ``on_frame(done, total_or_None)`` is called after
    each output frame (for a UI progress bar); ``progress`` shows a tqdm bar on stderr.

    Returns a :class:`JobResult` with status "done" or "skipped" (resume, output already
    finished). Errors are raised: :class:`InputError` for an unreadable input (naming it),
    :class:`ConfigError` for bad settings, or whatever the processor raised — in every case, and on
    KeyboardInterrupt, after writing a playable partial output when frames were produced.
    """
    s = _settings(codec, quality, audio, resize, segment_frames, resume, resume_warmup)
    input_path, output_path = Path(input_path), Path(output_path)
    _check_output_file(input_path, output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    result, exc = _process_file(
        input_path, output_path, _LazyProcessor(processor_factory), s, progress=progress, on_frame=on_frame,
        emit=_emitter(quiet),
    )
    if exc is not None:
        raise exc
    return result


# ------------------------------------------------------------------------------------------
# many files
# ------------------------------------------------------------------------------------------

def _check_output_file(input_path: Path, output_path: Path) -> None:
    if output_path.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise ConfigError(
            f"output {output_path} must end in one of {', '.join(sorted(OUTPUT_EXTENSIONS))} (or be a folder)"
        )
    if output_path.exists() and output_path.is_dir():
        raise ConfigError(f"output {output_path} is a folder; give a file name")
    try:
        same = input_path.exists() and output_path.exists() and os.path.samefile(input_path, output_path)
    except OSError:
        same = False
    if same or input_path.resolve() == output_path.resolve():
        raise ConfigError(f"output {output_path} is the input file; choose another name")


def _scan_folder(folder: Path, exclude: Path | None) -> list[Path]:
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue  # hidden files and our own .parts folders
        if exclude is not None:
            absolute = path.resolve()
            if absolute == exclude or exclude in absolute.parents:
                continue
        if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
            found.append(path)
    return found


def plan_outputs(inputs: str | Path | Iterable[str | Path], output: str | Path) -> list[tuple[Path, Path]]:
    """Pair every input video with its output path.

    ``inputs``: files and/or folders (scanned recursively for video suffixes, hidden entries and the
    output folder skipped). One input *file* and an ``output`` with a video suffix → that file.
    Otherwise ``output`` is a folder: each output is ``output/<path relative to its input
    folder>.mp4`` (or ``output/<name>.mp4`` for a file input). A file named explicitly is taken
    whatever its suffix; a missing one is kept so it is reported as failed, not silently dropped.
    Two inputs mapping to one output (``a/x.mp4`` and ``b/x.mov``) is a :class:`ConfigError`.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    sources = [Path(p) for p in inputs]
    if not sources:
        raise ConfigError("no input given; pass video files or folders")
    output = Path(output)
    single_file = len(sources) == 1 and not sources[0].is_dir()
    if single_file and output.suffix and not output.is_dir():
        _check_output_file(sources[0], output)
        return [(sources[0], output)]
    if output.suffix.lower() in VIDEO_EXTENSIONS and not output.is_dir():
        raise ConfigError(f"{len(sources)} inputs or a folder need an output folder, not the file {output}")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} exists and is not a folder")
    pairs: list[tuple[Path, Path]] = []
    for src in sources:
        if src.is_dir():
            files = _scan_folder(src, output.resolve())
            if not files:
                log.warning("%s: no video files found", src)
            pairs += [(f, output / f.relative_to(src).with_suffix(".mp4")) for f in files]
        else:
            pairs.append((src, output / (src.stem + ".mp4")))
    if not pairs:
        raise InputError(f"no video files found in {', '.join(map(str, sources))}")
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        key = dst.absolute()
        if key in seen:
            raise ConfigError(
                f"{seen[key]} and {src} would both be written to {dst}; rename one or process them separately"
            )
        seen[key] = src
        if src.exists() and src.resolve() == dst.resolve():
            raise ConfigError(f"output {dst} is the input file; choose another output folder")
    return pairs


def process_many(
    inputs: str | Path | Iterable[str | Path],
    output: str | Path,
    processor_factory: ProcessorFactory,
    *,
    workers: int = 1,
    ray_address: str | None = None,
    resume: bool = False,
    codec: str | None = None,
    quality: Quality = None,
    audio: AudioMode = "auto",
    resize: ResizeMode = "crop",
    segment_frames: int = DEFAULT_SEGMENT_FRAMES,
    resume_warmup: int = DEFAULT_RESUME_WARMUP,
    progress: bool = True,
    quiet: bool = False,
) -> BatchResult:
    """Process files and/or folders; see :func:`plan_outputs` for where outputs go.

    Sequential (``workers=1``, no ``ray_address``): one processor, built on first need and reused
    with ``reset()`` between files; a bar per file and one overall. With ``workers > 1`` or a
    ``ray_address``: Ray (local, started on demand with ``num_cpus=workers`` and shut down after, or
    the given cluster); ``workers`` actors, each building one processor (``num_gpus=1`` each when
    the cluster has GPUs, so at most one worker per GPU), files handed out one at a time (a task per
    file); only the overall bar is shown. Outputs are the same as sequentially.

    A file that fails (unreadable, decode error, processor error) is reported by name on stderr
    and in its :class:`JobResult`; the other files still run. A processor that cannot be built
    stops the batch with that error. KeyboardInterrupt stops the batch after making the current
    output(s) playable, prints what is done, and propagates. Returns a :class:`BatchResult`
    (``.failed``, ``.exit_code``, ``.summary()``).
    """
    s = _settings(codec, quality, audio, resize, segment_frames, resume, resume_warmup)
    if workers < 1:
        raise ConfigError(f"workers {workers} must be at least 1")
    pairs = plan_outputs(inputs, output)
    emit = _emitter(quiet)
    for _, dst in pairs:
        dst.parent.mkdir(parents=True, exist_ok=True)
    if workers > 1 or ray_address:
        results = _run_on_ray(pairs, processor_factory, s, workers, ray_address, progress, emit)
    else:
        results = _run_sequential(pairs, processor_factory, s, progress, emit)
    emit(results.summary())
    return results


def _run_sequential(pairs, factory, s: _Settings, progress: bool, emit) -> BatchResult:
    from tqdm import tqdm

    holder = _LazyProcessor(factory)
    results = BatchResult()
    overall = tqdm(
        total=len(pairs), desc="files", unit="file", disable=not progress or len(pairs) < 2, position=0, file=sys.stderr
    )
    src = None
    try:
        for src, dst in pairs:
            result, _ = _process_file(src, dst, holder, s, progress=progress, nested=len(pairs) > 1, emit=emit)
            results.append(result)
            if not result.ok:
                emit(result.describe())
            overall.update(1)
    except KeyboardInterrupt:
        emit(
            f"interrupted in {src} (file {len(results) + 1} of {len(pairs)}); what was done is playable; "
            "run again with resume to continue"
        )
        raise
    finally:
        overall.close()
    return results


# ------------------------------------------------------------------------------------------
# Ray
# ------------------------------------------------------------------------------------------

def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "workers > 1 or a Ray address needs Ray, which is not installed; install livediff[ray]"
        ) from exc
    return ray


class _FileWorker:
    """Ray actor body: one processor per worker, many files.

    Runs as a threaded actor (two slots) so :meth:`stop` can arrive while :meth:`run` works:
    Ray does not interrupt a running task of a synchronous actor, and workers do not get the
    terminal's Ctrl-C, so stopping is cooperative (checked before every frame).
    """

    def __init__(self, factory: ProcessorFactory):
        import threading

        self.holder = _LazyProcessor(factory)
        self._stop = threading.Event()

    def ready(self) -> bool:
        return True

    def stop(self) -> None:
        self._stop.set()

    def run(self, src: Path, dst: Path, s: _Settings) -> JobResult:
        result, _ = _process_file(
            src, dst, self.holder, s, progress=False, emit=_emitter(True), should_stop=self._stop.is_set
        )
        return result


def _run_on_ray(pairs, factory, s: _Settings, workers: int, address: str | None, progress: bool, emit) -> BatchResult:
    ray = _import_ray()
    from tqdm import tqdm

    try:
        ray.cloudpickle.dumps(factory)
    except Exception as exc:
        raise ConfigError(
            f"processor factory {factory!r} cannot be sent to Ray workers ({exc}); "
            "use a top-level class instance or functools.partial of a top-level function"
        ) from exc
    started = False
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # Local workers get the driver's import path, so factories defined in scripts or tests
            # (pickled by reference) import there too. A remote cluster needs livediff installed.
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
            )
        started = True
    results: list[JobResult | None] = [None] * len(pairs)
    pending: dict[Any, tuple[Any, int]] = {}
    overall = tqdm(total=len(pairs), desc="files", unit="file", disable=not progress, file=sys.stderr)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = max(1, min(workers, len(pairs), gpus if gpus else workers))
        actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_concurrency=2)(_FileWorker)
        queue = list(enumerate(pairs))
        queue.reverse()

        def submit(actor) -> None:
            if queue:
                i, (src, dst) = queue.pop()
                pending[actor.run.remote(src, dst, s)] = (actor, i)

        actors = [actor_cls.remote(factory) for _ in range(n_actors)]
        try:  # surface a factory that cannot be unpickled in the workers once, not per file
            ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as exc:
            raise ConfigError(f"Ray workers cannot load the processor factory {factory!r}: {exc}") from None
        for actor in actors:
            submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            actor, i = pending.pop(ref)
            src, dst = pairs[i]
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                # the processor could not be built (other errors come back as failed results):
                # re-raise the worker's own exception so the CLI shows its one-line message
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, BaseException) else exc.as_instanceof_cause()) from None
            except ray.exceptions.RayActorError as exc:  # worker died (OOM, segfault): replace it
                result = JobResult(src, dst, "failed", error=f"{src}: worker died ({type(exc).__name__}: {exc})")
                actor = actor_cls.remote(factory)
            results[i] = result
            if not result.ok:
                emit(result.describe())
            overall.update(1)
            submit(actor)
    except KeyboardInterrupt:
        # Ask the busy workers to stop; each makes its partial output playable and returns.
        for actor, _ in pending.values():
            actor.stop.remote()
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=120)
        finished = sum(r is not None for r in results)
        emit(
            f"interrupted; {finished} of {len(pairs)} files finished, partial outputs written for the "
            "running ones; run again with resume to continue"
        )
        raise
    finally:
        overall.close()
        if started:
            ray.shutdown()
    return BatchResult(results)
