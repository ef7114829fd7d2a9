"""Loading the networks of `pipelines.control`: ControlNets, the depth estimators of the `depth`
preprocessor and the pose estimators of `pose`, from hub ids or folders, or `random` (random
weights, for tests and speed)."""
from __future__ import annotations

import torch

from livediff.errors import ConfigError
from livediff.pipelines.pose import COCO_KEYPOINTS
from livediff.pipelines.models import named_pretrained
from livediff.pipelines.presets import random_weights


def load_controlnet(model: str, unet, seed: int = 0):
    """A ControlNet, or `random`: random weights in the layout of `unet` (`ControlNetModel.from_unet`,
    whose zero-initialised output convolutions are drawn at random too, so it changes the picture)."""
    from diffusers import ControlNetModel

    if model != "random":
        return named_pretrained(ControlNetModel, model, "ControlNet", "lllyasviel/sd-controlnet-canny")

    def build():
        net = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        for conv in (*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out):
            torch.nn.init.normal_(conv.weight, std=0.5)
        return net

    return random_weights(seed, build)


#: the `random` depth estimator: a small DPT (the architecture of Intel/dpt-large and dpt-hybrid-midas)
RANDOM_DEPTH = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                    patch_size=8, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                    backbone_out_indices=[0, 1, 2, 3])


def load_depth_model(model: str, seed: int = 0):
    """A monocular depth estimator (`transformers` AutoModelForDepthEstimation: DPT, Depth Anything…)."""
    from transformers import AutoModelForDepthEstimation, DPTConfig, DPTForDepthEstimation

    if model == "random":
        return random_weights(seed, lambda: DPTForDepthEstimation(DPTConfig(**RANDOM_DEPTH)))
    return named_pretrained(AutoModelForDepthEstimation, model, "depth model", "Intel/dpt-hybrid-midas")


#: the `random` pose estimator: a small ViTPose (the layout of usyd-community/vitpose-base-simple:
#: 16-pixel patches, the last layer's features upsampled 4× into 17 COCO heatmaps)
RANDOM_POSE_BACKBONE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                            image_size=[128, 96], patch_size=[16, 16], out_indices=[2])


def load_pose_model(model: str, seed: int = 0):
    """A top-down human pose estimator (`transformers` ViTPose or ViTPose+) whose first 17 heatmaps
    are COCO's body keypoints, as `pipelines.pose` reads them."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    if model == "random":
        config = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**RANDOM_POSE_BACKBONE), num_labels=COCO_KEYPOINTS)
        return random_weights(seed, lambda: VitPoseForPoseEstimation(config))
    loaded = named_pretrained(VitPoseForPoseEstimation, model, "pose model", "usyd-community/vitpose-base-simple")
    if loaded.config.num_labels < COCO_KEYPOINTS:
        raise ConfigError(f"pose model {model!r} predicts {loaded.config.num_labels} keypoints; the pose "
                          f"preprocessor needs COCO's {COCO_KEYPOINTS} body keypoints first")
    return loaded


LOADERS = {"depth": load_depth_model, "pose": load_pose_model}


def load_preprocessor_model(preprocessor: str, model: str, seed: int = 0):
    """The network of a `MODEL_PREPROCESSORS` preprocessor (`ControlNetSpec.preprocessor_network`)."""
    return LOADERS[preprocessor](model, seed=seed)
