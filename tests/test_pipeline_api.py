"""The public pipeline API on the tiny preset: kinds in/out, prompt updates, strength, filter, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from livediff.pipelines import ConfigError, InputError, ModelNotAvailableError, load_pipeline
from livediff.pipelines.schedule import strength_to_t_index_list
from livediff.pipelines.similarity import SimilarityFilter, SimilarityFilterConfig, skip_probability

SIZE = 64


def tiny(**overrides):
    settings = dict(model="tiny", t_index_list=[20, 40], cfg_type="self", width=SIZE, height=SIZE, device="cpu",
                    dtype="float32", seed=2)
    settings.update(overrides)
    pipe = load_pipeline(**settings)
    pipe.prepare(prompt="oil painting", negative_prompt="blurry", guidance_scale=1.5, delta=0.5)
    return pipe


def frame(seed=0, size=SIZE):
    return (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)


def test_output_kind_follows_input_kind():
    pipe = tiny()
    out = pipe(frame())
    assert isinstance(out, np.ndarray) and out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert isinstance(pipe(Image.fromarray(frame())), Image.Image)
    tensor = pipe(torch.rand(3, SIZE, SIZE))
    assert tensor.shape == (3, SIZE, SIZE) and 0 <= tensor.min() and tensor.max() <= 1


@pytest.mark.parametrize("cfg_type", ["none", "full", "self", "initialize"])
def test_update_prompt_changes_output_for_every_cfg_type(cfg_type):
    pipe = tiny(cfg_type=cfg_type)
    image = frame()
    before = [pipe(image) for _ in range(3)][-1]
    pipe.update_prompt("watercolor", negative_prompt="noisy")
    after = [pipe(image) for _ in range(3)][-1]
    assert after.shape == before.shape
    assert np.abs(after.astype(int) - before.astype(int)).max() > 0
    fresh = tiny(cfg_type=cfg_type)
    fresh.update_prompt("watercolor", negative_prompt="noisy")
    # once the buffer has been flushed the stream equals one started with the new prompt
    expected = [fresh(image) for _ in range(3)][-1]
    np.testing.assert_allclose(after.astype(int), expected.astype(int), atol=1)


def test_frame_buffer_size_takes_lists_and_returns_lists():
    pipe = tiny(frame_buffer_size=2, t_index_list=[10, 30, 45])
    out = pipe([frame(1), frame(2)])
    assert isinstance(out, list) and len(out) == 2 and out[0].shape == (SIZE, SIZE, 3)
    with pytest.raises(InputError, match="frame_buffer_size is 2"):
        pipe(frame(1))


def test_txt2img_makes_images():
    pipe = load_pipeline(model="tiny", mode="txt2img", t_index_list=[0], width=SIZE, height=SIZE, device="cpu",
                         dtype="float32")
    pipe.prepare(prompt="a cat", guidance_scale=1.0)
    first, second = pipe(), pipe()
    assert isinstance(first, Image.Image) and first.size == (SIZE, SIZE)
    assert np.asarray(first).std() > 0
    assert not np.array_equal(np.asarray(first), np.asarray(second))  # fresh noise every call
    with pytest.raises(ConfigError, match="takes no input"):
        pipe(frame())


def test_reset_gives_a_fresh_pipelines_outputs():
    pipe = tiny(t_index_list=[10, 25, 40])
    first = [pipe(frame(i)) for i in range(4)]
    pipe.reset()
    again = [pipe(frame(i)) for i in range(4)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_sessions_are_independent():
    pipe = tiny()
    other = pipe.new_session()
    other.prepare(prompt="pencil sketch")
    assert other.models is pipe.models
    reference = tiny()
    for i in range(3):
        other(frame(10 + i))
        np.testing.assert_array_equal(pipe(frame(i)), reference(frame(i)))


def test_strength_maps_to_stage_indices():
    assert strength_to_t_index_list(1.0, 1) == (0,)
    assert strength_to_t_index_list(0.36, 2) == (32, 45)
    assert strength_to_t_index_list(0.64, 4) == (18, 27, 36, 45)
    assert strength_to_t_index_list(0.05, 2) == (47, 49)
    with pytest.raises(ConfigError, match="strength 1.5"):
        strength_to_t_index_list(1.5, 2)
    with pytest.raises(ConfigError, match="fewer than 4"):
        strength_to_t_index_list(0.02, 4)
    pipe = tiny()
    pipe.set_strength(0.5)
    assert pipe.settings.t_index_list == (25, 45)
    assert pipe(frame()).shape == (SIZE, SIZE, 3)


def test_similarity_filter_skips_identical_frames_at_most_max_skip_in_a_row():
    sim = SimilarityFilter(SimilarityFilterConfig(threshold=0.95, max_skip=3), seed=0)
    x = torch.rand(1, 3, 8, 8)
    decisions = [sim.should_skip(x) for _ in range(12)]
    assert decisions == [False, True, True, True] * 3
    different = [torch.rand(1, 3, 8, 8) - 0.5 for _ in range(10)]
    assert not any(sim.should_skip(d) for d in different)


def test_skip_probability():
    assert skip_probability(1.0, 0.9) == 1.0
    assert skip_probability(0.9, 0.9) == 0.0
    assert skip_probability(0.5, 0.9) == 0.0
    assert skip_probability(0.95, 0.9) == pytest.approx(0.5)


def test_pipeline_reuses_output_for_skipped_frames():
    pipe = tiny(similarity_filter=dict(threshold=0.9, max_skip=2))
    calls = []
    encode = pipe.runners.encode
    pipe.runners.encode = lambda images: calls.append(1) or encode(images)
    image = frame()
    outputs = [pipe(image) for _ in range(6)]
    assert len(calls) == 2  # processed, skip, skip, processed, skip, skip
    assert outputs[1] is outputs[0]


@pytest.mark.parametrize("settings,message", [
    (dict(t_index_list=[20, 50]), "t_index_list value 50 is outside 0..49"),
    (dict(t_index_list=[-1]), "t_index_list value -1"),
    (dict(t_index_list=[40, 20]), "strictly increasing"),
    (dict(width=100), "width 100 must be a multiple of 8"),
    (dict(height=4096), "height 4096"),
    (dict(cfg_type="double"), "cfg_type 'double'"),
    (dict(mode="sketch"), "mode 'sketch'"),
    (dict(frame_buffer_size=0), "frame_buffer_size 0"),
    (dict(dtype="float16"), "float16' is not supported on device 'cpu'"),
    (dict(accelerator="warp-drive"), "accelerator 'warp-drive'"),
    (dict(similarity_filter=dict(threshold=1.5)), "threshold 1.5"),
])
def test_bad_settings_name_the_value(settings, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tiny(**settings)


def test_unknown_model_is_named():
    with pytest.raises(ConfigError, match="Unknown model 'no-such-model'"):
        tiny(model="no-such-model")
    with pytest.raises(ModelNotAvailableError, match="'someone/missing-model'"):
        tiny(model="someone/missing-model")


def test_wrong_image_shape_is_named():
    pipe = tiny()
    with pytest.raises(InputError, match="32x48"):
        pipe(np.zeros((48, 32, 3), np.uint8))
    with pytest.raises(InputError, match=r"\(64, 64\)"):
        pipe(np.zeros((64, 64), np.uint8))
    with pytest.raises(InputError, match="float64"):
        pipe(np.zeros((64, 64, 3), np.float64))


def test_running_before_prepare_is_an_error():
    pipe = load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32")
    with pytest.raises(ConfigError, match="prepare"):
        pipe(frame())
