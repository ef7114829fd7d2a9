"""Loading the networks of `pipelines.control`: ControlNets, and the networks of the preprocessors
that run one (`depth`'s depth estimators, `pose`'s pose estimators: each preprocessor's module declares
its loader, `PreprocessorSpec.load_network`), from hub ids or folders, or `random` (random weights,
for tests and speed)."""
from __future__ import annotations

import torch

from livediff.errors import ConfigError
from livediff.pipelines import control_registry
from livediff.pipelines.models import named_pretrained
from livediff.pipelines.presets import random_weights
# the loaders' old home: kept importable
from livediff.pipelines.preprocessors.depth import RANDOM_DEPTH, load_depth_model  # noqa: F401
from livediff.pipelines.preprocessors.pose import RANDOM_POSE_BACKBONE, load_pose_model  # noqa: F401


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


def load_preprocessor_model(preprocessor: str, model: str, seed: int = 0):
    """The network of a preprocessor that runs one (`ControlNetSpec.preprocessor_network`)."""
    spec = control_registry.get(preprocessor)
    if spec.load_network is None:
        raise ConfigError(f"preprocessor {preprocessor!r} runs no network")
    return spec.load_network(model, seed)
