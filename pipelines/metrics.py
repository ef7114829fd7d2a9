"""Temporal consistency metrics for edited (restyled) videos, with no learned weights.

A restyled video is temporally consistent when it moves the way the source moves and does not
change where the source does not. Without a reference output we can still measure that, using
the *source* video's own motion:

* **Optical flow** of the source between consecutive frames (OpenCV DIS by default, Farneback as
  an alternative). The flow is estimated on the source, never on the edited video, because the
  edited video is what is being judged: flicker in it must not be able to bend the yardstick.
* **Occlusion mask** from the forward-backward consistency test plus a motion-boundary test:
  pixels that are uncovered, covered or leave the picture between two frames have no valid
  correspondence and are left out.
* **Warp error**: edited frame t is warped along the source motion onto frame t+1's grid and
  compared with edited frame t+1 over visible pixels (mean absolute error, channels on a [0, 1]
  scale). An edit that "sticks" to the moving content scores ≈ the source's own warp error
  (flow and interpolation residual, reported as ``source_warp_error``); flicker raises it.
* **Frame-to-frame difference**: mean absolute difference between consecutive frames, for the
  edited and the source video, and their ratio. ≈1 means the edit changes as much as the
  source does; >1 means added flicker; <1 means the edit is smoother than the source (possibly
  frozen or lagging — the warp error tells those apart).
* **Throughput**: frames per second, only when the caller passes how long producing them took.

Conventions used throughout: a *flow* is a float32 array of shape (H, W, 2) holding (dx, dy) in
pixels; ``flow_ab[y, x]`` says that pixel (x, y) of frame a is found at (x + dx, y + dy) in
frame b. Frames are HxWx3 uint8 RGB. All errors are on a [0, 1] intensity scale (uint8 / 255),
averaged over the three channels.

Everything here is plain numpy/OpenCV; the maths lives in small pure functions so it can be
tested on synthetic video with known motion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import cv2
import numpy as np

from livediff.errors import ConfigError, InputError

FLOW_METHODS: tuple[str, ...] = ("dis", "farneback")

# Forward-backward test constants (Sundaram, Brox & Keutzer 2010, the usual choice): a pixel is
# visible when |f_ab(x) + f_ba(x + f_ab(x))|^2 <= ALPHA * (|f_ab|^2 + |f_ba(...)|^2) + BETA.
# The relative term tolerates the larger absolute errors of fast motion; BETA (px^2) tolerates
# sub-pixel noise where there is no motion at all.
FB_ALPHA = 0.01
FB_BETA = 0.5
# Motion-boundary test from the same paper: |grad u|^2 + |grad v|^2 > MB_ALPHA * |w|^2 + MB_BETA.
MB_ALPHA = 0.01
MB_BETA = 0.002

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- small pure maths


def to_gray(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 -> single-channel uint8, which is what OpenCV's flow estimators take."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def make_flow_estimator(method: str = "dis") -> FlowFn:
    """Return ``f(gray_a, gray_b) -> flow_ab`` for ``method`` ("dis" or "farneback").

    DIS (dense inverse search, MEDIUM preset) is fast and accurate enough for metrics and is the
    default. Farneback is kept as a second, independent estimator so a metric that depends on
    one estimator's quirks can be cross-checked. The DIS object keeps internal buffers, so each
    returned estimator is for one thread.
    """
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

        def dis_flow(gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
            return dis.calc(gray_a, gray_b, None).astype(np.float32, copy=False)

        return dis_flow
    if method == "farneback":

        def farneback_flow(gray_a: np.ndarray, gray_b: np.ndarray) -> np.ndarray:
            flow = cv2.calcOpticalFlowFarneback(
                gray_a, gray_b, None, pyr_scale=0.5, levels=4, winsize=15,
                iterations=3, poly_n=5, poly_sigma=1.2, flags=0,
            )
            return flow.astype(np.float32, copy=False)

        return farneback_flow
    raise ConfigError(f"unknown optical flow method {method!r}; allowed: {', '.join(FLOW_METHODS)}")


def optical_flow(frame_a: np.ndarray, frame_b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow from RGB ``frame_a`` to RGB ``frame_b`` (HxWx2 float32, see module conventions)."""
    return make_flow_estimator(method)(to_gray(frame_a), to_gray(frame_b))


def sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute sampling coordinates (map_x, map_y) = pixel grid + flow, for ``cv2.remap``."""
    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return xs + flow[..., 0], ys + flow[..., 1]


def backward_warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Resample ``image`` (frame b) onto frame a's grid: ``out[x] = image[x + flow_ab(x)]``.

    Backward warping (gather, bilinear) leaves no holes, unlike pushing pixels forward; samples
    that fall outside ``image`` are 0 and must be excluded by the caller (``consistency_mask``
    does that). Works for images and for flow fields alike.
    """
    map_x, map_y = sample_grid(flow)
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def consistency_mask(flow_ab: np.ndarray, flow_ba: np.ndarray,
                     alpha: float = FB_ALPHA, beta: float = FB_BETA) -> np.ndarray:
    """Visibility of frame a's pixels in frame b, by the forward-backward consistency test.

    Following x -> x + f_ab(x) and then back with f_ba must land where it started:
    ``|f_ab(x) + f_ba(x + f_ab(x))|^2 <= alpha * (|f_ab|^2 + |f_ba(x + f_ab(x))|^2) + beta``.
    Where a pixel is covered or uncovered between the frames the two flows disagree (one
    follows the occluder, the other the background), so the test fails. Pixels whose target
    lies outside frame b (content leaving the picture) are not visible either.
    Returns a bool HxW array on frame a's grid.
    """
    h, w = flow_ab.shape[:2]
    map_x, map_y = sample_grid(flow_ab)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    flow_ba_at_target = cv2.remap(flow_ba, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    round_trip = flow_ab + flow_ba_at_target
    lhs = np.sum(round_trip * round_trip, axis=-1)
    rhs = alpha * (np.sum(flow_ab * flow_ab, axis=-1)
                   + np.sum(flow_ba_at_target * flow_ba_at_target, axis=-1)) + beta
    return inside & (lhs <= rhs)


def motion_boundary_mask(flow: np.ndarray, alpha: float = MB_ALPHA, beta: float = MB_BETA) -> np.ndarray:
    """True where ``flow`` changes sharply: ``|grad u|^2 + |grad v|^2 > alpha * |w|^2 + beta``.

    Estimated flow is smooth across motion boundaries, so on a thin band next to a moving edge
    the forward and backward flows can agree by accident and the consistency test passes on
    pixels that were in fact just uncovered. Flagging large flow gradients (central differences)
    removes that band. Bool HxW.
    """
    grad_x = cv2.Sobel(flow, cv2.CV_32F, 1, 0, ksize=1) * 0.5  # [-1, 0, 1] / 2
    grad_y = cv2.Sobel(flow, cv2.CV_32F, 0, 1, ksize=1) * 0.5
    grad2 = np.sum(grad_x * grad_x + grad_y * grad_y, axis=-1)
    return grad2 > alpha * np.sum(flow * flow, axis=-1) + beta


def visible_mask(flow_ab: np.ndarray, flow_ba: np.ndarray) -> np.ndarray:
    """Pixels of frame a with a trustworthy correspondence in frame b: they pass the
    forward-backward test and are not on a motion boundary. This is the mask the metrics use."""
    return consistency_mask(flow_ab, flow_ba) & ~motion_boundary_mask(flow_ab)


def to_unit(frame: np.ndarray) -> np.ndarray:
    """uint8 -> float32 on [0, 1], the scale every error in this module is reported on."""
    return frame.astype(np.float32) * (1.0 / 255.0)


def warp_error(edited_prev: np.ndarray, edited_next: np.ndarray,
               flow_next_to_prev: np.ndarray, visible: np.ndarray) -> float:
    """Mean absolute error between edited frame t+1 and edited frame t warped onto it.

    ``flow_next_to_prev`` is the *source* flow from frame t+1 to frame t, so
    ``backward_warp(edited_prev, flow)`` is where frame t's edited content should be at t+1 if
    the edit moved exactly with the source. ``visible`` (on frame t+1's grid) excludes pixels with
    no correspondence. Scale [0, 1], averaged over channels; NaN when nothing is visible.
    """
    if not visible.any():
        return float("nan")
    warped = backward_warp(to_unit(edited_prev), flow_next_to_prev)
    diff = np.abs(warped - to_unit(edited_next)).mean(axis=-1)
    return float(diff[visible].mean())


def frame_difference(frame_a: np.ndarray, frame_b: np.ndarray) -> float:
    """Mean absolute difference of two frames, no motion compensation ([0, 1] scale).

    This is the crude flicker measure: for a static camera it is the flicker itself; with motion
    it also counts real change, which is why it is reported next to the source's own value.
    """
    return float(np.abs(to_unit(frame_a) - to_unit(frame_b)).mean())


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
                    max_frames: int | None = None, *,
                    elapsed_seconds: float | None = None) -> TemporalMetrics:
    """``evaluate_frames`` on two video files, decoded with PyAV and streamed in constant memory.

    With ``max_frames`` decoding stops there and the frame counts come from counting packets;
    without it both files are decoded to the end. Raises ``InputError``
    naming the file that is missing, unreadable, corrupt or shorter than two frames.
    """
    _check_max_frames(max_frames)
    acc = _Accumulator(flow)
    source_iter = iter_video_frames(source_path)
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
