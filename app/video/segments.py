"""Interruption safety and resume: a file is written as closed segments plus a manifest.

Frames are encoded into fixed-size **segments** (``segment_frames`` each, default 120), each a
complete, closed MP4 in the output's work folder (``.NAME.livediff/``, see :mod:`workarea`), listed
in a ``manifest.json`` written atomically after each segment closes. A segment is listed only once
it has been read back and holds exactly the frames written to it, at their timestamps: a segment
closed by an interruption inside the encoder (a frame taken but its packets not yet muxed) or cut
short by a full disk is deleted, and its frames are made again. At the end the segments are joined
by remuxing (no re-encode) into the output together with the input's audio, and the work files are
removed. On ``KeyboardInterrupt`` (Ctrl-C, SIGTERM) or a crash mid-file the open segment is closed
and verified and the listed segments are joined at once (audio trimmed to the video) into
``.NAME.livediff/partial.mp4``, a playable file of every frame kept so far; the work folder is kept.
The output's own name only ever holds a finished file, replaced atomically (temporary name in the
work folder, then rename) when a new one is finished. A hard kill (SIGKILL, power loss) loses at most
the open segment.

With ``resume=True`` the manifest is checked against the input (path, size, mtime), the encode
settings and the processor's identity (for the diffusion pipeline: everything that changes the
pixels — model and weights fingerprint, prompt, seed, steps, bank...); a difference refuses to
resume and names what differs. Every listed segment is checked against its SHA-256 recorded when
it was verified (a bad one and all after it are redone), the frames they cover are
decoded and skipped, and processing continues. The output then has exactly the frame count of an uninterrupted run.

Streaming processors are stateful (in-flight latents, feature bank). One that can save its state
(``save_state``/``load_state``: the stream and video pipelines) has it saved with every segment
closed in the ordinary course, as ``state_NNNNNN.pt`` next to it, its SHA-256 in the manifest; a
resume loads the state of the last segment whose state verifies, so the frames after the resume
point are exactly those of an uninterrupted run. The state is stored, not rebuilt by replaying
frames, because the merged bank and the counter that picks the banked frames depend on every frame
since the start: only a replay of the whole file would rebuild them. A segment closed by an
interruption has no state (the processor may have been stopped inside a frame), nor has one whose
state is missing or damaged: it and the segments after it are made again from the last good
state (or from the start). The states of the last two such segments are kept (one is a fallback),
older ones deleted: a state with a large bank weighs tens of MB. Segments close at the end of a
call's outputs once they hold ``segment_frames``; a processor that returns frames late (the causal
pipeline) has its state saved only when it holds no frame beyond the segment, which for the causal
pipeline is always the case (it returns a whole chunk as the chunk's last frame comes in), else
the segment has no state. Processors that cannot
save their state are reset and re-fed the last ``resume_warmup`` input frames before the resume
point (outputs discarded), which continues a short-history state closely but not exactly. An
output that exists with no manifest in its work folder is treated as finished and skipped on
resume.

Disk: the parts and the joined output exist side by side for a moment (≈2x the output size).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from livediff.app.video.codecs import AudioMode
from livediff.app.video.concat import concat_parts
from livediff.app.video.geometry import FrameGeometry
from livediff.app.video.options import JobOptions
from livediff.app.video.codecs import FFMPEG_ERRORS
from livediff.app.video.reader import VideoReader, open_input
from livediff.app.video.workarea import MANIFEST_NAME, clear_work
from livediff.app.video.writer import VideoWriter
from livediff.errors import ConfigError, InputError, LivediffError
from livediff.files import file_sha256

#: 4: segments carry the processor's saved state (3: segments listed only once verified)
MANIFEST_VERSION = 4
#: saved processor states kept: the newest, and one to fall back on if it does not verify
KEPT_STATES = 2


class SegmentNotVerified(LivediffError):
    """A closed segment does not hold what was written to it; it is deleted and its frames redone."""


@dataclass
class Segment:
    file: str
    first: int  # index of its first frame in the input
    frames: int
    start: str  # exact start time in seconds, Fraction as "num/den"
    end: str  # end time of its last frame
    sha256: str  # of the closed file: resume redoes a segment whose bytes changed
    state: str | None = None  # the processor's state after its last frame (`save_state`), if saved
    state_sha256: str | None = None


def input_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def differences(before: Any, now: Any, path: str = "") -> list[str]:
    """`what: old → new` for every leaf that differs between two JSON-like values, each named as the
    user gave it: a setting as its option (`processor.prompt.prompt` → `--prompt`), the input as such."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [line for key in sorted(set(before) | set(now), key=str)
                for line in differences(before.get(key), now.get(key), f"{path}.{key}" if path else str(key))]
    return [] if before == now else [f"{user_words(path)}: {before!r} → {now!r}"]


#: identity keys that are not an option's own name
WORDS = {"loras": "--lora", "size": "the output size", "work": "--width/--height", "region": "--resize",
         "time_base": "the input video's time base", "codec": "--codec", "quality": "--quality"}


def user_words(path: str) -> str:
    """A manifest identity key in the user's words: the input file's facts, the weights, or the option
    that set it (`processor.prompt.prompt` → `--prompt`)."""
    parts = path.split(".")
    last = parts[-1]
    if parts[0] == "input":
        return f"the input video's {last}"
    if "weights" in parts[:-1]:
        return f"the {last} weights"
    if "bank" in parts[:-1]:
        return f"the feature bank's {last.replace('_', ' ')}"
    return WORDS.get(last, "--" + last.replace("_", "-"))


def load_resumable(parts: Path, identity: dict, resume: bool, emit: Callable[[str], None],
                   stateful: bool = False) -> list[Segment]:
    """Verified segments of an earlier run of the same work, or [] after clearing the folder for a
    fresh start (no resume asked). Resuming different work is refused: it would mix two styles.
    ``stateful``: the processor saves its state, so the segments end at the last one whose state
    verifies (the frames after it are made again from it)."""
    if not (parts / MANIFEST_NAME).exists():
        clear_work(parts)
        return []
    segments: list[Segment] = []
    if resume:
        try:
            manifest = json.loads((parts / MANIFEST_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{parts}: the record of the interrupted run is unreadable ({exc}); run again without "
                              f"--resume to start over") from None
        if manifest.get("version") != MANIFEST_VERSION:
            raise ConfigError(f"{parts} was written by another livediff version; run again without --resume to "
                              f"start over")
        changed = differences(manifest.get("identity"), identity)
        if changed:
            raise ConfigError(f"cannot resume {identity['input']['path']}: the settings differ from the interrupted "
                              f"run ({'; '.join(changed)}); use the same settings, or pass --overwrite instead of "
                              f"--resume to start over")
        expected = 0
        for entry in manifest.get("segments", []):
            try:
                seg = Segment(**entry)
            except TypeError:
                break
            file = parts / seg.file
            if seg.first != expected or seg.frames < 1 or not file.is_file() or file_sha256(file) != seg.sha256:
                emit(f"{file.name}: damaged or missing, its frames are made again")
                break
            segments.append(seg)
            expected += seg.frames
    if stateful:
        segments = up_to_last_state(parts, segments, emit)
    states = {s.state for s in segments if s.state is not None}
    clear_work(parts, keep={s.file for s in segments} | states | ({MANIFEST_NAME} if segments else set()))
    return segments


def up_to_last_state(parts: Path, segments: list[Segment], emit: Callable[[str], None]) -> list[Segment]:
    """The segments up to the last one whose saved state verifies; the frames after it are made again."""
    last = max((i for i, s in enumerate(segments) if s.state is not None and (parts / s.state).is_file()
                and file_sha256(parts / s.state) == s.state_sha256), default=-1)
    if last < len(segments) - 1:
        after = segments[last].file if last >= 0 else "the start"
        emit(f"{segments[last + 1].file}: no saved stream state to continue from, its frames and the later ones are "
             f"made again from {after}")
    return segments[:last + 1]


def save_state(parts: Path, segments: list[Segment], save: Callable[..., object], identity: dict) -> None:
    """Save the processor's state after the last listed segment, record it, and drop the states
    older than the last `KEPT_STATES` (listed first, deleted after, so the manifest never names a
    missing file)."""
    last = segments[-1]
    name = Path(last.file).stem.replace("seg_", "state_") + ".pt"
    tmp = parts / f"{name}.tmp"
    save(tmp)
    os.replace(tmp, parts / name)
    segments[-1] = replace(last, state=name, state_sha256=file_sha256(parts / name))
    with_state = [i for i, s in enumerate(segments) if s.state is not None]
    old = [segments[i].state for i in with_state[:-KEPT_STATES]]
    for i in with_state[:-KEPT_STATES]:
        segments[i] = replace(segments[i], state=None, state_sha256=None)
    save_manifest(parts, identity, segments)
    for file in old:
        (parts / str(file)).unlink(missing_ok=True)


def save_manifest(parts: Path, identity: dict, segments: list[Segment]) -> None:
    write_json_atomic(
        parts / MANIFEST_NAME,
        {"version": MANIFEST_VERSION, "identity": identity, "segments": [asdict(s) for s in segments]},
    )


def assemble(
    parts: Path, segments: list[Segment], output: Path, source: Path, audio: AudioMode, partial: bool
) -> int:
    """Join segments into ``output`` atomically (temp name, then rename); returns its frame count."""
    tmp = parts / f"joining{output.suffix.lower()}"
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


class SegmentWriter:
    """One open segment: written under a temporary name, renamed when closed and complete."""

    def __init__(self, parts: Path, number: int, first: int, start_pts: int, reader: VideoReader,
                 geom: FrameGeometry, options: JobOptions):
        self.name = f"seg_{number:06d}.mp4"
        self.tmp = parts / f"seg_{number:06d}.writing.mp4"
        self.written_times: list[Fraction] = []
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
            codec=options.codec,
            quality=options.quality,
            faststart=False,
        )

    @property
    def frames(self) -> int:
        return self.writer.frames_written

    def write(self, rgb: np.ndarray, pts: int) -> None:
        self.writer.write(rgb, pts - self.start_pts)  # parts start at 0; concat adds the start back
        self.written_times.append((pts - self.start_pts) * self.time_base)
        self.last_pts = pts

    def commit(self) -> Segment | None:
        """Close and verify; keep the file if it holds frames. Returns its manifest entry (None if
        empty); raises :class:`SegmentNotVerified` (the file deleted) if it does not hold exactly
        the frames written to it."""
        try:
            self.writer.close()
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        held = segment_times(self.tmp)
        if held != self.written_times:
            self.tmp.unlink(missing_ok=True)
            found = "cannot be read back" if held is None else f"holds {len(held)} frames"
            raise SegmentNotVerified(f"{self.name}: {found}, not the {self.frames} frames written to it at their "
                                     f"timestamps; its frames are made again")
        final = self.parts / self.name
        os.replace(self.tmp, final)
        start = Fraction(self.start_pts) * self.time_base
        end = Fraction(self.last_pts + self.step) * self.time_base
        return Segment(self.name, self.first, self.frames, str(start), str(end), file_sha256(final))

    def discard(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


def segment_times(path: Path) -> list[Fraction] | None:
    """The presentation times (seconds) of the video packets in ``path``, sorted; None if it cannot
    be read. In seconds: the muxer may store another time base than the one written."""
    try:
        container = open_input(path)
    except InputError:
        return None
    try:
        stream = container.streams.video[0]
        return sorted(Fraction(p.pts) * stream.time_base for p in container.demux(stream) if p.size and p.pts is not None)
    except FFMPEG_ERRORS:
        return None
    finally:
        container.close()
