"""Temporal consistency metrics on synthetic video with known motion (CPU, small, fast)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import livediff.app.commands
from livediff.app import cli
from livediff.app.eval import flow, metrics
from livediff.errors import ConfigError, InputError

SIZE = 64
N_FRAMES = 10
PAN = (2, 1)  # pixels per frame (dx, dy) of the camera pan
# Flow + bilinear resampling residual on this clip is ~0.001 (0-1 scale); flicker of 2% is ~0.02.
CONSISTENT_TOL = 0.005
# After an x264 (crf 8, yuv420p) round trip the frames carry encoder noise that is not a pure
# translation: source-vs-itself warp error measured ~0.004 here.
VIDEO_TOL = 0.01


def texture(h: int, w: int, seed: int) -> np.ndarray:
    """Random texture: fine grey detail (blurred noise, so the flow estimators have gradients to
    lock on to) plus a smooth colour tint. Colour is kept low-frequency because yuv420p halves
    chroma resolution; fine colour detail would not survive the mp4 round trip as a translation."""
    rng = np.random.default_rng(seed)
    detail = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)[..., None]
    tint = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 6.0)
    norm = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    t = 0.7 * norm(detail) + 0.3 * norm(tint)
    return (t * 255).round().astype(np.uint8)


def pan_clip(n: int = N_FRAMES, size: int = SIZE, step: tuple[int, int] = PAN, seed: int = 0) -> list[np.ndarray]:
    """A window sliding over a big texture by `step` pixels per frame: content moves by -step."""
    big = texture(size + n * step[1] + 1, size + n * step[0] + 1, seed)
    return [np.ascontiguousarray(big[t * step[1]:t * step[1] + size, t * step[0]:t * step[0] + size])
            for t in range(n)]


def square_scene(x: int, seed: int = 1, size: int = SIZE, sq: int = 24) -> np.ndarray:
    """Static textured background with a textured square whose left edge is at column `x`."""
    frame = texture(size, size, seed).copy()
    y0 = (size - sq) // 2
    frame[y0:y0 + sq, x:x + sq] = texture(sq, sq, seed + 1)
    return frame


def flicker(frames: list[np.ndarray], amplitude: float, seed: int = 3) -> list[np.ndarray]:
    """Add a per-frame brightness offset of `amplitude` (0-1 scale) times a fixed random pattern
    in [-1, 1], plus a little per-pixel noise of the same relative size; the pattern does not
    depend on `amplitude`, so the result must get monotonically worse as it grows."""
    rng = np.random.default_rng(seed)
    signs = rng.uniform(-1, 1, size=len(frames))
    out = []
    for f, s in zip(frames, signs):
        noise = rng.standard_normal(f.shape).astype(np.float32) * 0.25
        g = f.astype(np.float32) + 255.0 * amplitude * (s + noise)
        out.append(np.clip(g, 0, 255).round().astype(np.uint8))
    return out


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "8", "preset": "ultrafast"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def eval_only_cli(monkeypatch):
    """Build the CLI with only the `eval` command so this file does not depend on the state of
    the other sub-command modules."""
    monkeypatch.setattr(livediff.app.commands, "COMMANDS", ["eval"])


# --------------------------------------------------------------------------- pure functions


def test_warp_uses_backward_flow_and_is_exact_for_integer_motion():
    prev = texture(SIZE, SIZE, 5)
    nxt = np.roll(prev, shift=(1, 3), axis=(0, 1))  # content moves +3 px in x, +1 in y
    flow_next_to_prev = np.zeros((SIZE, SIZE, 2), np.float32)
    flow_next_to_prev[..., 0], flow_next_to_prev[..., 1] = -3.0, -1.0
    flow_prev_to_next = -flow_next_to_prev
    visible = flow.visible_mask(flow_next_to_prev, flow_prev_to_next)
    # the rows/columns that came in through the border have no source pixel
    assert not visible[:1].any() and not visible[:, :3].any()
    assert visible[1:, 3:].all()
    assert flow.warp_error(prev, nxt, flow_next_to_prev, visible) == 0.0
    assert flow.warp_error(prev, nxt, np.zeros_like(flow_next_to_prev), visible) > 0.05


def test_consistency_mask_marks_uncovered_region_with_true_flow():
    d, sq, x0, y0 = 4, 24, 16, 20
    # a square moves right by d over a static background: true flows
    fw = np.zeros((SIZE, SIZE, 2), np.float32)
    fw[y0:y0 + sq, x0:x0 + sq, 0] = d  # frame t -> t+1, on frame t's grid
    bw = np.zeros((SIZE, SIZE, 2), np.float32)
    bw[y0:y0 + sq, x0 + d:x0 + d + sq, 0] = -d  # frame t+1 -> t, on frame t+1's grid
    visible = flow.consistency_mask(bw, fw)  # on frame t+1's grid
    assert not visible[y0:y0 + sq, x0:x0 + d].any(), "uncovered background must be invisible"
    assert visible[y0:y0 + sq, x0 + d:x0 + d + sq].all(), "the moved square is visible"
    background = np.ones((SIZE, SIZE), bool)
    background[y0:y0 + sq, x0:x0 + d + sq] = False
    assert visible[background].all()
    # on frame t's grid, the strip the square is about to cover is the occluded one
    covered = flow.consistency_mask(fw, bw)
    assert not covered[y0:y0 + sq, x0 + sq:x0 + sq + d].any()


def test_visible_mask_with_estimated_flow_finds_uncovered_region():
    d, sq, x0 = 4, 24, 16
    y0 = (SIZE - sq) // 2
    a, b = square_scene(x0), square_scene(x0 + d)
    fw = flow.optical_flow(a, b, "dis")
    bw = flow.optical_flow(b, a, "dis")
    assert np.allclose(np.median(fw[y0 + 6:y0 + sq - 6, x0 + 6:x0 + sq - 6], axis=(0, 1)), [d, 0], atol=0.5)
    visible = flow.visible_mask(bw, fw)
    uncovered = visible[y0 + 2:y0 + sq - 2, x0:x0 + d]  # corners excluded
    assert 1.0 - uncovered.mean() >= 0.75
    far = np.ones_like(visible)
    far[y0 - 8:y0 + sq + 8, x0 - 8:x0 + d + sq + 8] = False
    far[:4], far[-4:], far[:, :4], far[:, -4:] = False, False, False, False
    assert visible[far].mean() >= 0.95


# --------------------------------------------------------------------------- evaluate_frames


@pytest.mark.parametrize("flow", ["dis", "farneback"])
def test_identical_and_color_transformed_edits_are_consistent(flow):
    src = pan_clip()
    same = metrics.evaluate_frames(src, src, flow=flow)
    assert same.warp_error is not None and same.warp_error < CONSISTENT_TOL
    assert same.warp_error == pytest.approx(same.source_warp_error)
    assert same.frame_diff_ratio == pytest.approx(1.0)
    assert same.frames_used == same.source_frames == same.edited_frames == N_FRAMES
    assert len(same.warp_error_per_pair) == N_FRAMES - 1
    assert 0.8 < same.visible_fraction < 1.0  # the strip entering through the border is masked
    # a per-pixel colour function of the source moves with it: still consistent
    lut = (255.0 * (np.arange(256) / 255.0) ** 0.6).round().astype(np.uint8)
    styled = [np.ascontiguousarray(lut[255 - f][..., ::-1]) for f in src]
    assert metrics.evaluate_frames(src, styled, flow=flow).warp_error < CONSISTENT_TOL


def test_moving_object_scene_is_consistent_with_occlusions_masked():
    src = [square_scene(10 + 3 * t) for t in range(8)]
    m = metrics.evaluate_frames(src, src)
    # residual flow error next to the (masked) moving edges: measured 0.003-0.005 over 13 seeds
    assert m.warp_error < 0.008
    assert m.visible_fraction < 0.95  # occlusion band around the moving square is excluded


def test_warp_error_grows_monotonically_with_flicker():
    src = pan_clip()
    amplitudes = [0.0, 0.01, 0.03, 0.06, 0.12]
    results = [metrics.evaluate_frames(src, flicker(src, a)) for a in amplitudes]
    errors = [r.warp_error for r in results]
    assert errors[0] < CONSISTENT_TOL
    assert all(b > a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > 10 * errors[0]
    ratios = [r.frame_diff_ratio for r in results]
    assert ratios[0] == pytest.approx(1.0, abs=0.02) and ratios[-1] > 1.2


def test_resize_counts_throughput_and_dict():
    src = pan_clip()
    big = [cv2.resize(f, (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_LINEAR) for f in src[:7]]
    m = metrics.evaluate_frames(src, big, elapsed_seconds=2.0)
    assert (m.frames_used, m.source_frames, m.edited_frames) == (7, N_FRAMES, 7)
    assert m.source_size == (SIZE, SIZE) and m.edited_size == (2 * SIZE, 2 * SIZE)
    assert m.fps == pytest.approx(7 / 2.0)
    assert m.warp_error < 0.02  # resampling twice softens the edited frames a little
    d = m.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["edited_size"] == [2 * SIZE, 2 * SIZE] and d["fps"] == pytest.approx(3.5)
    table = m.format_table()
    assert "warp error" in table and "mismatch" in table and "resized" in table
    assert metrics.evaluate_frames(src, src).to_dict()["fps"] is None


def test_bad_arguments_raise_user_errors():
    src = pan_clip(n=3)
    with pytest.raises(ConfigError, match=r"'raft'.*dis, farneback"):
        metrics.evaluate_frames(src, src, flow="raft")
    with pytest.raises(InputError, match="at least 2"):
        metrics.evaluate_frames(src[:1], src)
    with pytest.raises(InputError, match="edited frame 0"):
        metrics.evaluate_frames(src, [f.astype(np.float32) for f in src])
    with pytest.raises(ConfigError, match="max_frames"):
        metrics.evaluate_frames(src, src, max_frames=1)


# --------------------------------------------------------------------------- files and the CLI


def test_evaluate_videos_and_cli(tmp_path, capsys, eval_only_cli):
    src = pan_clip()
    a = write_mp4(tmp_path / "source.mp4", src)
    b = write_mp4(tmp_path / "edited.mp4", flicker(src, 0.06)[:8])

    same = metrics.evaluate_videos(a, a)
    assert same.warp_error < VIDEO_TOL and same.frames_used == N_FRAMES
    m = metrics.evaluate_videos(a, b)
    assert (m.frames_used, m.source_frames, m.edited_frames) == (8, N_FRAMES, 8)
    assert m.warp_error > 5 * same.warp_error
    assert m.fps is None and m.source_path == str(a)
    capped = metrics.evaluate_videos(a, b, flow="farneback", max_frames=4)
    assert capped.frames_used == 4 and capped.flow_method == "farneback"
    assert (capped.source_frames, capped.edited_frames) == (N_FRAMES, 8)  # full lengths

    out = tmp_path / "metrics.json"
    assert cli.main(["eval", str(a), str(b), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "warp error" in printed
    data = json.loads(out.read_text())
    for key in ("warp_error", "source_warp_error", "frame_diff_edited", "frame_diff_source",
                "frame_diff_ratio", "visible_fraction", "fps", "frames_used", "source_frames",
                "edited_frames", "flow_method", "warp_error_per_pair"):
        assert key in data
    assert data["warp_error"] == pytest.approx(m.warp_error)
    assert data["fps"] is None and data["flow_method"] == "dis"
    assert (data["frames_used"], data["source_frames"], data["edited_frames"]) == (8, N_FRAMES, 8)

    assert cli.main(["eval", str(a), str(b), "--format", "json", "--max-frames", "3",
                     "--elapsed", "1.5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames_used"] == 3 and printed["fps"] == pytest.approx(8 / 1.5)


def test_corrupt_or_missing_file_is_an_input_error(tmp_path, capsys, eval_only_cli):
    good = write_mp4(tmp_path / "good.mp4", pan_clip(n=3))
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="corrupt.mp4"):
        metrics.evaluate_videos(good, bad)
    with pytest.raises(InputError, match="missing.mp4"):
        metrics.evaluate_videos(tmp_path / "missing.mp4", good)

    assert cli.main(["eval", str(bad), str(good)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("livediff: error:") and "corrupt.mp4" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    assert cli.main(["eval", str(good), str(good), "--flow", "raft"]) == 2
    assert "'raft'" in capsys.readouterr().err
