"""Temporal consistency of an edited video against its source: the result type, the frame-pair
accumulation and the entry points (`evaluate_frames`, `evaluate_videos`); the maths is in `flow`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import cv2
import numpy as np

from livediff.app.eval.flow import frame_difference, make_flow_estimator, to_gray, visible_mask, warp_error
from livediff.errors import ConfigError, InputError


# --------------------------------------------------------------------------- result type


def _clean(value: float | None) -> float | None:
    """NaN/inf -> None so the dict is valid JSON (``json.dumps(allow_nan=False)``)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


@dataclass
class TemporalMetrics:
    """Temporal consistency of an edited video against its source.

    All errors/differences are mean absolute values on a [0, 1] scale, averaged over RGB.

    * ``warp_error`` — mean over consecutive pairs of the masked warp error of the edited video
      along the source flow (lower is more consistent; pairs with no visible pixel are skipped).
    * ``source_warp_error`` — the same measure on the source itself: the floor set by flow and
      interpolation error on this clip. Compare ``warp_error`` with it, not with 0.
    * ``frame_diff_edited`` / ``frame_diff_source`` — mean absolute difference between
      consecutive frames, no motion compensation; ``frame_diff_ratio`` = edited / source
      (None when the source is static).
    * ``visible_fraction`` — mean fraction of pixels that pass the occlusion test.
    * ``fps`` — ``edited_frames / elapsed_seconds`` when a timing was given, else None.
    * ``frames_used`` = min(source_frames, edited_frames), or ``max_frames`` if smaller; both
      full counts are kept so a length mismatch is visible in the report.
    """

    flow_method: str
    frames_used: int
    source_frames: int
    edited_frames: int
    source_size: tuple[int, int]  # (width, height)
    edited_size: tuple[int, int]  # (width, height), before resizing to the source size
    warp_error: float | None
    source_warp_error: float | None
    frame_diff_edited: float | None
    frame_diff_source: float | None
    frame_diff_ratio: float | None
    visible_fraction: float | None
    elapsed_seconds: float | None = None
    fps: float | None = None
    warp_error_per_pair: list[float | None] = field(default_factory=list)
    source_path: str | None = None
    edited_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (NaN -> None, tuples -> lists)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, float):
                value = _clean(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, list):
                value = [_clean(v) if isinstance(v, float) else v for v in value]
            out[name] = value
        return out

    def format_table(self) -> str:
        """Human-readable two-column table (plain text, fixed width)."""

        def num(value: float | None, digits: int = 4) -> str:
            return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"

        rows: list[tuple[str, str]] = []
        if self.source_path or self.edited_path:
            rows.append(("source", str(self.source_path)))
            rows.append(("edited", str(self.edited_path)))
        count = f"{self.frames_used}"
        if self.source_frames != self.edited_frames:
            count += f"  (source {self.source_frames}, edited {self.edited_frames}: mismatch)"
        sw, sh = self.source_size
        ew, eh = self.edited_size
        size = f"{sw}x{sh}" + ("" if (sw, sh) == (ew, eh) else f"  (edited {ew}x{eh}, resized)")
        rows += [
            ("frames used", count),
            ("size", size),
            ("flow", self.flow_method),
            ("warp error (edited)", num(self.warp_error)),
            ("warp error (source, floor)", num(self.source_warp_error)),
            ("frame diff (edited)", num(self.frame_diff_edited)),
            ("frame diff (source)", num(self.frame_diff_source)),
            ("frame diff ratio", num(self.frame_diff_ratio, 3)),
            ("visible fraction", num(self.visible_fraction, 3)),
            ("throughput (fps)", num(self.fps, 2)),
        ]
        width = max(len(k) for k, _ in rows)
        line = "-" * (width + 2 + max(len(v) for _, v in rows))
        body = [f"{k.ljust(width)}  {v}" for k, v in rows]
        return "\n".join(["temporal consistency (errors: mean |diff| on a 0-1 scale)", line, *body, line])


# --------------------------------------------------------------------------- accumulation


def _check_frame(frame: Any, role: str, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 \
            or frame.shape[2] != 3:
        desc = f"{frame.dtype} array of shape {frame.shape}" if isinstance(frame, np.ndarray) \
            else type(frame).__name__
        raise InputError(f"{role} frame {index} must be an HxWx3 uint8 RGB array, got {desc}")
    if frame.shape[0] < 2 or frame.shape[1] < 2:
        raise InputError(f"{role} frame {index} is too small: {frame.shape[1]}x{frame.shape[0]}")
    return frame


class _Accumulator:
    """Consumes (source, edited) frame pairs in order, keeping only the previous pair in memory,
    so a long video is measured in constant memory."""

    def __init__(self, flow: str) -> None:
        self.method = flow
        self.flow_fn = make_flow_estimator(flow)  # validates ``flow`` before any decoding
        self.n = 0
        self.size: tuple[int, int] | None = None  # source (w, h)
        self.edited_size: tuple[int, int] | None = None
        self.prev: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # src, gray, edited
        self.warp: list[float] = []
        self.warp_src: list[float] = []
        self.diff_edit: list[float] = []
        self.diff_src: list[float] = []
        self.visible: list[float] = []

    def add(self, src: np.ndarray, edit: np.ndarray) -> None:
        src = _check_frame(src, "source", self.n)
        edit = _check_frame(edit, "edited", self.n)
        h, w = src.shape[:2]
        if self.size is None:
            self.size = (w, h)
            self.edited_size = (edit.shape[1], edit.shape[0])
        elif self.size != (w, h):
            raise InputError(f"source frame {self.n} is {w}x{h}, earlier frames are "
                             f"{self.size[0]}x{self.size[1]}")
        if edit.shape[:2] != (h, w):
            shrink = edit.shape[0] * edit.shape[1] > h * w
            edit = cv2.resize(edit, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        gray = to_gray(src)
        if self.prev is not None:
            p_src, p_gray, p_edit = self.prev
            flow_fw = self.flow_fn(p_gray, gray)  # t -> t+1
            flow_bw = self.flow_fn(gray, p_gray)  # t+1 -> t
            visible = visible_mask(flow_bw, flow_fw)  # on frame t+1's grid
            self.visible.append(float(visible.mean()))
            self.warp.append(warp_error(p_edit, edit, flow_bw, visible))
            self.warp_src.append(warp_error(p_src, src, flow_bw, visible))
            self.diff_edit.append(frame_difference(p_edit, edit))
            self.diff_src.append(frame_difference(p_src, src))
        self.prev = (src, gray, edit)
        self.n += 1

    def result(self, source_frames: int, edited_frames: int,
               elapsed_seconds: float | None) -> TemporalMetrics:
        if self.n < 2:
            raise InputError(f"need at least 2 frames in both videos to measure temporal "
                             f"consistency, got source {source_frames}, edited {edited_frames}")
        assert self.size is not None and self.edited_size is not None
        fd_edit = _nanmean(self.diff_edit)
        fd_src = _nanmean(self.diff_src)
        ratio = fd_edit / fd_src if fd_edit is not None and fd_src else None
        fps = None
        if elapsed_seconds is not None:
            if not (elapsed_seconds > 0 and math.isfinite(elapsed_seconds)):
                raise ConfigError(f"elapsed seconds must be a positive number, got {elapsed_seconds!r}")
            fps = edited_frames / elapsed_seconds
        return TemporalMetrics(
            flow_method=self.method,
            frames_used=self.n,
            source_frames=source_frames,
            edited_frames=edited_frames,
            source_size=self.size,
            edited_size=self.edited_size,
            warp_error=_nanmean(self.warp),
            source_warp_error=_nanmean(self.warp_src),
            frame_diff_edited=fd_edit,
            frame_diff_source=fd_src,
            frame_diff_ratio=ratio,
            visible_fraction=_nanmean(self.visible),
            elapsed_seconds=elapsed_seconds,
            fps=fps,
            warp_error_per_pair=[_clean(v) for v in self.warp],
        )


def _check_max_frames(max_frames: int | None) -> None:
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                   or max_frames < 2):
        raise ConfigError(f"max_frames must be an integer >= 2 or None, got {max_frames!r}")


def _consume(acc: _Accumulator, source: Iterator[np.ndarray], edited: Iterator[np.ndarray],
             max_frames: int | None) -> tuple[int, int]:
    """Feed pairs until either side ends (or ``max_frames``). Without ``max_frames`` the rest of
    the longer side is drained and counted so a length mismatch is reported honestly; with it
    the returned counts stop at the cap (callers that can count cheaply fix them up)."""
    n_src = n_edit = 0
    while max_frames is None or acc.n < max_frames:
        src = next(source, None)
        if src is not None:
            n_src += 1
        edit = next(edited, None)
        if edit is not None:
            n_edit += 1
        if src is None or edit is None:
            break
        acc.add(src, edit)
    if max_frames is None:
        n_src += sum(1 for _ in source)
        n_edit += sum(1 for _ in edited)
    return n_src, n_edit


# --------------------------------------------------------------------------- public entry points


def evaluate_frames(source_frames: Iterable[np.ndarray], edited_frames: Iterable[np.ndarray],
                    flow: str = "dis", *, max_frames: int | None = None,
                    elapsed_seconds: float | None = None) -> TemporalMetrics:
    """Temporal metrics of ``edited_frames`` against ``source_frames`` (HxWx3 uint8 RGB each).

    Edited frames of another size are resized to the source size. With different lengths the
    first min(len) frames are used and both lengths are recorded. ``max_frames`` caps the frames
    used. ``elapsed_seconds`` is how long producing all the edited frames took; it gives
    ``fps = edited_frames / elapsed_seconds``. Raises ``ConfigError`` for an unknown
    ``flow`` and ``InputError`` for malformed frames or fewer than two frames.
    """
    _check_max_frames(max_frames)
    acc = _Accumulator(flow)
    n_src, n_edit = _consume(acc, iter(source_frames), iter(edited_frames), max_frames)
    if max_frames is not None:  # report full lengths where they are known without iterating
        n_src = len(source_frames) if hasattr(source_frames, "__len__") else n_src
        n_edit = len(edited_frames) if hasattr(edited_frames, "__len__") else n_edit
    return acc.result(n_src, n_edit, elapsed_seconds)


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decode the first video stream of ``path`` as HxWx3 uint8 RGB frames (PyAV).

    Any failure to open or decode — missing file, not a video, corrupt data — becomes an
    ``InputError`` naming the file, so the CLI can print one sentence instead of a traceback.
    """
    import av  # local: PyAV loads FFmpeg, only needed for files

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; eval compares two video files")
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot open video file {path}: {exc}") from exc
    try:
        if not container.streams.video:
            raise InputError(f"{path} has no video stream")
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"cannot decode video file {path}: {exc}") from exc
    finally:
        container.close()


def count_video_frames(path: str | Path) -> int:
    """Number of frames in the first video stream of ``path``, by demuxing packets without
    decoding them (cheap, so a ``max_frames`` run can still report the true length)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise InputError(f"cannot read video file {path}: {exc}") from exc


def evaluate_videos(source_path: str | Path, edited_path: str | Path, flow: str = "dis",
                    max_frames: int | None = None, *, elapsed_seconds: float | None = None,
                    region: tuple[int, int, int, int] | None = None) -> TemporalMetrics:
    """``evaluate_frames`` on two video files, decoded with PyAV and streamed in constant memory.

    ``region`` (x, y, w, h): the part of the source the edit shows (a job that processed a centred
    crop); the source is cut to it, so like is compared with like, never a stretched crop.
    With ``max_frames`` decoding stops there and the frame counts come from counting packets;
    without it both files are decoded to the end. Raises ``InputError``
    naming the file that is missing, unreadable, corrupt or shorter than two frames.
    """
    _check_max_frames(max_frames)
    acc = _Accumulator(flow)
    source_iter = iter_video_frames(source_path)
    if region is not None:
        x, y, w, h = region
        source_iter = (f[y:y + h, x:x + w] for f in source_iter)
    edited_iter = iter_video_frames(edited_path)
    try:
        n_src, n_edit = _consume(acc, source_iter, edited_iter, max_frames)
    finally:
        source_iter.close()
        edited_iter.close()
    for path, count in ((source_path, n_src), (edited_path, n_edit)):
        if count < 2:
            raise InputError(f"{path} has {count} decodable frame(s); need at least 2")
    if max_frames is not None:
        n_src = max(n_src, count_video_frames(source_path))
        n_edit = max(n_edit, count_video_frames(edited_path))
    metrics = acc.result(n_src, n_edit, elapsed_seconds)
    metrics.source_path = str(source_path)
    metrics.edited_path = str(edited_path)
    return metrics
