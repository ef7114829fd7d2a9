"""Temporal consistency of edited (restyled) videos, the maths: optical flow, occlusion masks,
warp error, frame difference — no learned weights.

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
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from livediff.errors import ConfigError

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
