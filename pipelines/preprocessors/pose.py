"""`pose`: a human pose estimator (ViTPose) given as `preprocessor_model` (hub id, folder or `random`),
run on the pipeline's device on all the frames of a call at once; its keypoints are drawn as an
OpenPose skeleton on the host (`pipelines.pose`: only keypoints and scores cross to the host, not the
frames). Joints scored below `keypoint_threshold` are not drawn."""
from __future__ import annotations

from livediff.errors import ConfigError
from livediff.pipelines import checks
from livediff.pipelines.control_registry import PreprocessorSpec, register

EXAMPLE = "usyd-community/vitpose-base-simple"
#: joints scored lower are not drawn (`ControlNetSpec.keypoint_threshold`'s default)
DEFAULT_THRESHOLD = 0.3
#: the `random` pose estimator: a small ViTPose (the layout of usyd-community/vitpose-base-simple:
#: 16-pixel patches, the last layer's features upsampled 4× into 17 COCO heatmaps)
RANDOM_POSE_BACKBONE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                            image_size=[128, 96], patch_size=[16, 16], out_indices=[2])


def load_pose_model(model: str, seed: int = 0):
    """A top-down human pose estimator (`transformers` ViTPose or ViTPose+) whose first 17 heatmaps
    are COCO's body keypoints, as `pipelines.pose` reads them."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    from livediff.pipelines.models import named_pretrained
    from livediff.pipelines.pose import COCO_KEYPOINTS
    from livediff.pipelines.presets import random_weights

    if model == "random":
        config = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**RANDOM_POSE_BACKBONE), num_labels=COCO_KEYPOINTS)
        return random_weights(seed, lambda: VitPoseForPoseEstimation(config))
    loaded = named_pretrained(VitPoseForPoseEstimation, model, "pose model", EXAMPLE)
    if loaded.config.num_labels < COCO_KEYPOINTS:
        raise ConfigError(f"pose model {model!r} predicts {loaded.config.num_labels} keypoints; the pose "
                          f"preprocessor needs COCO's {COCO_KEYPOINTS} body keypoints first")
    return loaded


def check(spec) -> None:
    checks.number("pose keypoint_threshold", spec.keypoint_threshold, 0.0, 1.0)


def run(images, *, spec, network, given, index):
    import torch

    from livediff.pipelines.pose import pose_map

    with torch.no_grad():
        return pose_map(network, images, spec.keypoint_threshold)


SPEC = register(PreprocessorSpec(
    name="pose", order=60, summary="an OpenPose skeleton from ViTPose", runs_on="host", run=run,
    options=("preprocessor_model", "keypoint_threshold"), check=check,
    network="a ViTPose model", network_example=EXAMPLE,
    load_network=lambda model, seed: load_pose_model(model, seed=seed),
))
