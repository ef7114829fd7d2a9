"""The folded upsampler (`livediff.subpixel`) computes what diffusers' nearest 2× + 3×3 conv does."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch.utils.flop_counter import FlopCounterMode

from livediff.cross_attention import weight_sharing_copy
from livediff.pipelines.models import load_models
from livediff.subpixel import FoldedUpsample2D, fold_upsamplers, transposed_kernel, upsample_conv


def test_the_transposed_convolution_equals_upsample_then_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 4, 3, padding=1).double()
    for shape in ((2, 5, 7, 6), (1, 5, 1, 1), (3, 5, 4, 9)):
        x = torch.randn(*shape, dtype=torch.float64)
        expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        folded = upsample_conv(x, transposed_kernel(conv.weight.detach()), conv.bias)
        assert folded.shape == expected.shape
        assert (folded - expected).abs().max() < 1e-12
    # control: the kernel's taps are not interchangeable
    flipped = transposed_kernel(conv.weight.detach()).flip(-1)
    assert (upsample_conv(x, flipped, conv.bias) - expected).abs().max() > 1e-2


def test_folding_spends_four_ninths_of_the_multiply_adds():
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    x = torch.randn(1, 32, 8, 8)
    kernel = transposed_kernel(conv.weight.detach())  # once per model, not per call
    counts = []
    for run in (lambda: conv(F.interpolate(x, scale_factor=2.0, mode="nearest")),
                lambda: upsample_conv(x, kernel, conv.bias)):
        with FlopCounterMode(display=False) as counter:
            run()
        counts.append(counter.get_total_flops())
    assert counts[1] * 9 == counts[0] * 4


def test_a_folded_unet_copy_equals_the_original_and_leaves_it_untouched():
    unet = load_models("tiny", device="cpu", dtype="float64").unet
    before = [type(m) for m in unet.modules()]
    twin = fold_upsamplers(weight_sharing_copy(unet))
    upsamplers = sum(isinstance(m, Upsample2D) for m in unet.modules())
    assert upsamplers > 0
    assert sum(isinstance(m, FoldedUpsample2D) for m in twin.modules()) == upsamplers
    assert not any(isinstance(m, Upsample2D) for m in twin.modules())
    assert [type(m) for m in unet.modules()] == before
    assert twin.state_dict().keys() == unet.state_dict().keys()
    assert all(a is b for a, b in zip(twin.parameters(), unet.parameters()))
    torch.manual_seed(1)
    sample = torch.randn(2, unet.config.in_channels, 16, 16, dtype=torch.float64)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, dtype=torch.float64)
    t = torch.tensor([999.0, 500.0])
    expected = unet(sample, t, encoder_hidden_states=text).sample
    got = twin(sample, t, encoder_hidden_states=text).sample
    assert (got - expected).abs().max() < 1e-10


def test_an_odd_output_size_is_upsampled_as_diffusers_does():
    torch.manual_seed(2)
    upsample = Upsample2D(6, use_conv=True).double()
    folded = FoldedUpsample2D(upsample.conv)
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64)
    for size in (None, (10, 10), (11, 9)):
        assert (folded(x, size) - upsample(x, size)).abs().max() < 1e-12
