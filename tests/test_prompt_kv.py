"""Cross-attention keys and values are projected once per prompt, never per frame, in every mode."""
from __future__ import annotations

import pytest
import torch

from livediff import load_pipeline
from livediff.networks import text_layout


def projections_counted(unet):
    """A counter of calls of any module (original or weight-sharing copy) whose weight is one of the
    UNet's cross-attention key projections."""
    modules = dict(unet.named_modules())
    weights = {id(modules[f"{name}.to_k"].weight) for name in text_layout(unet).layers}
    calls = []

    def hook(module, args, output):
        if id(getattr(module, "weight", None)) in weights:
            calls.append(1)

    return calls, torch.nn.modules.module.register_module_forward_hook(hook)


@pytest.mark.parametrize("mode", ["img2img", "video"])
def test_a_stream_projects_the_text_once_per_prompt(mode):
    pipe = load_pipeline(model="tiny", mode=mode, t_index_list=[20, 40], width=64, height=64, device="cpu",
                         dtype="float32", cfg_type="full", seed=3)
    layers = len(text_layout(pipe.models.unet).layers)
    calls, handle = projections_counted(pipe.models.unet)
    try:
        pipe.prepare(prompt="oil painting", guidance_scale=1.5)
        assert len(calls) == 2 * layers  # the prompt and the negative prompt
        frames = [torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
        first = [pipe(f, output="tensor") for f in frames[:3]]
        assert len(calls) == 2 * layers  # no frame projects anything
        pipe.update_prompt("watercolour")
        assert len(calls) == 3 * layers  # the new prompt only
        pipe(frames[3], output="tensor")
        assert len(calls) == 3 * layers
    finally:
        handle.remove()
    # the K/V follow the prompt: the same frames under the new prompt come out differently
    pipe.reset()
    again = [pipe(f, output="tensor") for f in frames[:3]]
    assert (again[-1] - first[-1]).abs().max() > 1e-3
