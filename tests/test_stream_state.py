"""A stream stopped at frame k and continued in a freshly built pipeline from its saved state
(`stream_state` → torch.save → torch.load → `load_stream_state`) makes exactly the frames of an
uninterrupted run (bit for bit: CPU, float32), in every mode that streams."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from livediff.errors import ConfigError
from livediff.pipelines import load_pipeline
from test_video_pipeline import SIZE, build

FRAMES = 9


def frames(count: int = FRAMES) -> list[np.ndarray]:
    """A panning texture with a repeated frame (the similarity filter skips it), then a cut to another."""
    rng = np.random.default_rng(0)
    smooth = np.ones((8, 8, 1), np.uint8)  # 8-pixel blocks: a 1-pixel pan is no scene cut
    texture = np.kron(rng.integers(0, 256, (SIZE // 8, 3 * SIZE // 8, 3), np.uint8), smooth)
    other = np.kron(rng.integers(0, 256, (SIZE // 8, 3 * SIZE // 8, 3), np.uint8), smooth)
    offsets = [i - (i >= 4) for i in range(count)]  # frame 4 repeats frame 3
    return [np.ascontiguousarray((texture if i < 6 else other)[:, x:x + SIZE]) for i, x in enumerate(offsets)]


def outputs(pipe, inputs) -> list[np.ndarray]:
    return [np.asarray(pipe() if pipe.config.mode == "txt2img" else pipe(frame)) for frame in inputs]


def through_file(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


CASES = {
    "img2img": dict(mode="img2img"),
    "img2img_similarity_filter": dict(mode="img2img", similarity_filter=dict(threshold=0.5, max_skip=2)),
    "txt2img": dict(mode="txt2img"),
    "video_fifo": dict(bank=dict(cache_interval=2, max_frames=2, merge=False)),
    "video_merged": dict(bank=dict(cache_interval=1, max_frames=1, merge=True)),
    "video_sparse_merged": dict(bank=dict(cache_interval=3, max_frames=2, merge=True, sparse_keep_ratio=0.5)),
    "video_two_frames_per_call": dict(frame_buffer_size=2, bank=dict(cache_interval=1, max_frames=2, merge=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stream_continued_from_its_saved_state_makes_the_uninterrupted_frames(case):
    settings = CASES[case]
    per_call = settings.get("frame_buffer_size", 1)
    inputs = frames()
    if per_call > 1:
        inputs = [np.stack(inputs[i:i + per_call]) for i in range(0, FRAMES - 1, per_call)]
    uninterrupted = build(**settings)
    whole = outputs(uninterrupted, inputs)
    if "bank" in settings:  # the cut to another scene, and only it, empties the bank
        assert int(uninterrupted.scene_cuts) == 1
    if "similarity_filter" in settings:  # the repeated frame is skipped: its output is the last one again
        assert np.array_equal(whole[4], whole[3])
    for stop in (2, 4):
        first = build(**settings)
        before = outputs(first, inputs[:stop])
        state = through_file(first.stream_state())
        second = build(**settings)
        second.load_stream_state(state)
        after = outputs(second, inputs[stop:])
        for i, (got, want) in enumerate(zip(before + after, whole, strict=True)):
            assert np.array_equal(got, want), f"{case}: frame {i} differs after a stop at {stop}"


def test_without_the_state_a_continued_video_stream_differs():
    """What the state carries: a fresh pipeline fed the rest of the frames does not give them."""
    settings = CASES["video_merged"]
    inputs = frames()
    whole = outputs(build(**settings), inputs)
    assert not np.array_equal(outputs(build(**settings), inputs[4:])[1], whole[5])


def test_a_state_saved_under_other_settings_is_refused_naming_them():
    state = build(bank=dict(merge=True), seed=3).stream_state()
    with pytest.raises(ConfigError, match=r"seed: 3 → 4"):
        build(bank=dict(merge=True), seed=4).load_stream_state(state)
    with pytest.raises(ConfigError, match=r"bank: .*merge=True.*→ .*merge=False"):
        build(bank=dict(merge=False), seed=3).load_stream_state(state)
    with pytest.raises(ConfigError, match="version"):
        build(bank=dict(merge=True), seed=3).load_stream_state({**state, "version": 0})


def causal_frames(pipe, inputs, end: bool) -> list[np.ndarray]:
    out = [np.asarray(frame) for f in inputs for frame in pipe(f)]
    return out + [np.asarray(frame) for frame in pipe.flush()] if end else out


def test_a_causal_stream_continued_from_its_saved_state_makes_the_uninterrupted_frames():
    """Chunks of 5 then 8 frames, a one-chunk window (the ring rolls by the third chunk): stopped
    inside the first chunk, inside the second and at a chunk's end, with frames held each time."""
    def build_causal():
        pipe = load_pipeline(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                             dtype="float32", t_index_list=[20, 40], seed=7,
                             causal=dict(chunk_frames=2, sink_chunks=1, window_chunks=1))
        pipe.prepare(prompt="oil painting")
        return pipe

    inputs = frames(9) + frames(9) + frames(5)
    whole = causal_frames(build_causal(), inputs, end=True)
    assert len(whole) == len(inputs)
    for stop in (3, 9, 13):
        first = build_causal()
        before = causal_frames(first, inputs[:stop], end=False)
        state = through_file(first.stream_state())
        second = build_causal()
        second.load_stream_state(state)
        after = causal_frames(second, inputs[stop:], end=True)
        for i, (got, want) in enumerate(zip(before + after, whole, strict=True)):
            assert np.array_equal(got, want), f"causal: frame {i} differs after a stop at {stop}"
