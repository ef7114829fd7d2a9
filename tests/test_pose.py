"""The `pose` ControlNet preprocessor: hand-made keypoints draw OpenPose's skeleton (limb colours,
no low-confidence joints, black background); heatmap peaks decode to frame pixels through the
letterbox; a random-weight ViTPose runs once for a batch of frames; a pose ControlNet pipeline
runs end to end; bad options are named (API and CLI)."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from livediff.errors import ConfigError
from livediff.pipelines import StreamConfig, load_pipeline
from livediff.pipelines.control import ControlNetSpec
from livediff.pipelines.control_models import load_pose_model
from livediff.pipelines.pose import (COLOURS, LIMB_BRIGHTNESS, LIMBS, decode_heatmaps, draw_skeleton, letterbox_region,
                                     model_input, pose_map, to_openpose)

SIZE = 64


def limb_colour(a: int, b: int) -> tuple[int, ...]:
    return tuple(int(c * LIMB_BRIGHTNESS) for c in COLOURS[LIMBS.index((a, b))])


def test_hand_made_keypoints_draw_openpose_limbs_and_joints_on_black():
    """Neck, right shoulder and elbow sure, right wrist unsure, the rest absent."""
    points = np.zeros((18, 2), dtype=np.float32)
    scores = np.zeros(18, dtype=np.float32)
    for index, (x, y), score in ((1, (40, 8), 0.9), (2, (12, 10), 0.8), (3, (10, 44), 0.5), (4, (50, 56), 0.29)):
        points[index], scores[index] = (x, y), score
    canvas = draw_skeleton(points, scores, SIZE, SIZE, threshold=0.3)

    assert canvas.shape == (SIZE, SIZE, 3) and canvas.dtype == np.uint8
    assert tuple(canvas[9, 26]) == limb_colour(1, 2)  # midway along neck → right shoulder
    assert tuple(canvas[27, 11]) == limb_colour(2, 3)  # midway along the upper arm
    for index in (1, 2, 3):
        x, y = points[index].astype(int)
        assert tuple(canvas[y, x]) == COLOURS[index]  # joints at full colour, over their limbs
    wrist_x, wrist_y = points[4].astype(int)
    assert not canvas[wrist_y - 6:wrist_y + 7, wrist_x - 6:wrist_x + 7].any()  # the unsure wrist
    assert not canvas[50, 30].any()  # nor its forearm, midway from the elbow
    drawn = {tuple(c) for c in canvas.reshape(-1, 3)}
    assert drawn == {(0, 0, 0), limb_colour(1, 2), limb_colour(2, 3), *(COLOURS[i] for i in (1, 2, 3))}
    assert (canvas.sum(axis=-1) == 0).mean() > 0.8  # a skeleton on black


def test_coco_keypoints_take_openposes_order_with_the_neck_between_the_shoulders():
    coco = torch.arange(17 * 2, dtype=torch.float32).view(1, 17, 2)
    scores = torch.linspace(0.1, 0.9, 17).view(1, 17)
    points, point_scores = to_openpose(coco, scores)
    assert points.shape == (1, 18, 2) and point_scores.shape == (1, 18)
    torch.testing.assert_close(points[0, 1], (coco[0, 5] + coco[0, 6]) / 2)
    assert point_scores[0, 1] == scores[0, 5]  # the less sure shoulder
    for openpose, coco_index in ((0, 0), (2, 6), (5, 5), (8, 12), (13, 15), (14, 2), (17, 3)):
        assert torch.equal(points[0, openpose], coco[0, coco_index])


def test_a_heatmap_peak_decodes_to_its_frame_pixel():
    """16×12 heatmaps over a region 48×64 frame pixels wide starting 10 pixels left of the frame:
    cell (row 5, col 7) is frame pixel (-10 + 7.5·4 - 0.5, 5.5·4 - 0.5)."""
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(12.0), indexing="ij")
    heatmaps = torch.zeros(2, 17, 16, 12)
    heatmaps[1, 3] = 0.9 * torch.exp(-((rows - 5) ** 2 + (cols - 7) ** 2) / 2)
    keypoints, scores = decode_heatmaps(heatmaps, (-10, 0, 48, 64))
    assert keypoints.shape == (2, 17, 2) and scores.shape == (2, 17)
    torch.testing.assert_close(keypoints[1, 3], torch.tensor([19.5, 21.5]))
    assert scores[1, 3].item() == pytest.approx(0.9) and scores[0].eq(0).all()


def test_the_letterbox_maps_model_input_pixels_back_onto_the_frame():
    """A white square in a wide frame, fed as the model sees it (letterboxed to 4:3 portrait), is
    found back on the frame where it was."""
    frame = torch.full((1, 3, 48, 80), -1.0)
    frame[..., 20:28, 60:68] = 1.0
    region = letterbox_region(48, 80, 64, 48)
    assert region == (0, -29, 80, 107)
    pixels = model_input(frame, region, (64, 48))
    assert pixels.shape == (1, 3, 64, 48)
    keypoints, _ = decode_heatmaps(pixels.sum(dim=1, keepdim=True), region)
    x, y = keypoints[0, 0].tolist()
    assert 60 <= x <= 68 and 20 <= y <= 28


def test_the_random_vitpose_draws_a_batch_of_frames_in_one_run():
    model = load_pose_model("random", seed=0).eval()
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    frames = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        skeletons = pose_map(model, frames)
    assert skeletons.shape == (3, 3, 48, 64) and len(calls) == 1
    assert skeletons.amin() >= 0 and skeletons.amax() <= 1 and skeletons.amax() > 0


def test_a_pose_controlnet_pipeline_runs_two_frames_end_to_end():
    from transformers import VitPoseForPoseEstimation

    pipe = load_pipeline(model="tiny", t_index_list=[20, 30, 40], width=SIZE, height=SIZE, device="cpu",
                         dtype="float32", frame_buffer_size=2,
                         controlnet=dict(model="random", preprocessor="pose", preprocessor_model="random"))
    pipe.prepare(prompt="a dancer")
    model = pipe.models.control_preprocessors[0]
    assert isinstance(model, VitPoseForPoseEstimation)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    frames = [torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    out = pipe(frames, output="tensor")
    assert out.shape == (2, 3, SIZE, SIZE) and torch.isfinite(out).all() and len(calls) == 1


def test_random_pose_and_random_depth_are_different_networks_to_load():
    def networks(preprocessor):
        return StreamConfig(model="tiny", controlnet=dict(model="random", preprocessor=preprocessor,
                                                          preprocessor_model="random")).control_networks()

    assert networks("pose") == (("random", ("pose", "random")),)
    assert networks("pose") != networks("depth")


@pytest.mark.parametrize("threshold, message", [(1.5, "pose keypoint_threshold 1.5 is outside \\[0.0, 1.0\\]"),
                                                (-0.1, "pose keypoint_threshold -0.1 is outside \\[0.0, 1.0\\]"),
                                                ("high", "pose keypoint_threshold 'high' must be a number in")])
def test_a_bad_keypoint_threshold_is_named_with_its_range(threshold, message):
    with pytest.raises(ConfigError, match=message):
        ControlNetSpec(model="random", preprocessor="pose", preprocessor_model="random", keypoint_threshold=threshold)


def test_pose_without_its_model_is_named():
    with pytest.raises(ConfigError, match="preprocessor 'pose' needs preprocessor_model .*vitpose-base-simple"):
        StreamConfig(model="tiny", controlnet=dict(model="random", preprocessor="pose"))
    with pytest.raises(ConfigError, match="preprocessor_model is for preprocessors 'depth' and 'pose', not 'tile'"):
        ControlNetSpec(model="random", preprocessor="tile", preprocessor_model="random")


def cli_args(**values) -> argparse.Namespace:
    defaults = dict(controlnet=[], control_preprocessor=[], control_scale=[], preprocessor_model=[])
    return argparse.Namespace(**{**defaults, **values})


def test_cli_preprocessor_models_go_to_the_depth_and_pose_controlnets_in_order():
    from livediff.app.commands.options import controlnet_settings

    specs = controlnet_settings(cli_args(controlnet=["a", "b", "c"], control_preprocessor=["depth", "canny", "pose"],
                                         preprocessor_model=["dpt", "vitpose"]))
    assert [s.get("preprocessor_model") for s in specs] == ["dpt", None, "vitpose"]
    with pytest.raises(ConfigError, match="--control-preprocessor pose needs its network: add a --preprocessor-model"):
        controlnet_settings(cli_args(controlnet=["a"], control_preprocessor=["pose"]))
    with pytest.raises(ConfigError, match="--preprocessor-model given 2 time\\(s\\) for 1 depth or pose"):
        controlnet_settings(cli_args(controlnet=["a"], control_preprocessor=["pose"], preprocessor_model=["x", "y"]))
