"""`depth`: a monocular depth estimator (transformers' AutoModelForDepthEstimation: DPT, Depth
Anything…) given as `preprocessor_model` (hub id, folder or `random`), run on the pipeline's device
on all the frames of a call at once; its estimate, min–max scaled per frame, is the control image."""
from __future__ import annotations

from livediff.pipelines.control_registry import PreprocessorSpec, register

EXAMPLE = "Intel/dpt-hybrid-midas"
#: the `random` depth estimator: a small DPT (the architecture of Intel/dpt-large and dpt-hybrid-midas)
RANDOM_DEPTH = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                    patch_size=8, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
                    backbone_out_indices=[0, 1, 2, 3])


def load_depth_model(model: str, seed: int = 0):
    """A monocular depth estimator (`transformers` AutoModelForDepthEstimation: DPT, Depth Anything…)."""
    from transformers import AutoModelForDepthEstimation, DPTConfig, DPTForDepthEstimation

    from livediff.pipelines.models import named_pretrained
    from livediff.pipelines.presets import random_weights

    if model == "random":
        return random_weights(seed, lambda: DPTForDepthEstimation(DPTConfig(**RANDOM_DEPTH)))
    return named_pretrained(AutoModelForDepthEstimation, model, "depth model", EXAMPLE)


def depth_map(model, images):
    """(B,3,H,W) images in [-1,1] → the depth model's estimate, min–max scaled per image to [0,1] and
    repeated on 3 channels, at the images' size. The model sees a square of its own size (DPT's
    position embeddings are for `image_size`²), as its image processors resize to; [-1,1] is already
    DPT's input normalisation (mean 0.5, std 0.5)."""
    import torch
    import torch.nn.functional as F

    size = getattr(model.config, "image_size", 384)
    square = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    depth = model(pixel_values=square.to(model.dtype)).predicted_depth.unsqueeze(1)
    depth = F.interpolate(depth, size=images.shape[-2:], mode="bicubic", align_corners=False)
    low = depth.amin(dim=(2, 3), keepdim=True)
    high = depth.amax(dim=(2, 3), keepdim=True)
    scaled = (depth - low) / (high - low).clamp_min(torch.finfo(depth.dtype).tiny)
    return scaled.expand(-1, 3, -1, -1).to(images.dtype)


def run(images, *, spec, network, given, index):
    import torch

    with torch.no_grad():
        return depth_map(network, images)


SPEC = register(PreprocessorSpec(
    name="depth", order=50, summary="a depth estimator's map", runs_on="device", run=run,
    options=("preprocessor_model",), network="a depth model", network_example=EXAMPLE,
    load_network=lambda model, seed: load_depth_model(model, seed=seed),
))
