"""Nearest-neighbour 2× upsampling followed by a 3×3 convolution, computed as four 2×2 convolutions.

Every UNet and VAE decoder upsamples this way: repeat each pixel 2×2, then a 3×3 convolution on the
large image. Each output pixel's 3×3 window on the repeated image covers only 2×2 distinct input
pixels, whose weights can be summed beforehand, and which 2×2 depends only on the output pixel's
position in its 2×2 block (its *phase*). So the same output is four 2×2 convolutions on the small
image, one per phase, interleaved: 16 multiply-adds per input pixel and channel pair instead of 36
(2.25× fewer), and the repeated image is never materialised. That is the same function up to float
rounding (the summed weights round once), in every backend, since exported graphs see plain
convolutions. In SD 2.1 at 256² these convolutions are 10% of the UNet's FLOPs.

`phase_kernels` and `upsample_conv` are the maths; `fold_upsamplers` swaps the `Upsample2D` modules
of a model you own (a weight-sharing copy: `livediff.cross_attention.weight_sharing_copy`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: 1-D phase matrices: row a of PHASE[d] says which 3-tap weights act on input offset a (d=0: −1, 0;
#: d=1: 0, +1) for outputs at position 2i + d
_PHASE = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)), ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(4, out, in, 2, 2) kernels, phases in the order (0,0), (0,1), (1,0), (1,1), of a 3×3 `weight`
    (out, in, 3, 3) applied after nearest 2× upsampling; half-precision weights are summed in float32."""
    wide = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    phase = torch.tensor(_PHASE, dtype=wide, device=weight.device)
    w = weight.to(wide)
    kernels = [torch.einsum("ak,oikl,bl->oiab", phase[dy], w, phase[dx]) for dy in (0, 1) for dx in (0, 1)]
    return torch.stack(kernels).to(weight.dtype)


def upsample_conv(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3×3(nearest_upsample_2×(x)) with zero padding 1, from `phase_kernels` of the 3×3 weight."""
    batch, _, height, width = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    phases = [F.conv2d(padded[:, :, dy:dy + height + 1, dx:dx + width + 1], kernels[2 * dy + dx], bias)
              for dy in (0, 1) for dx in (0, 1)]
    out = torch.stack(phases, dim=-1).view(batch, -1, height, width, 2, 2)
    return out.permute(0, 1, 2, 4, 3, 5).reshape(batch, -1, 2 * height, 2 * width)


def _foldable_conv(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class SubPixelConv(nn.Module):
    """A 3×3 convolution that takes the image *before* its nearest 2× upsampling (`upsample_conv`).
    Keeps the convolution as `conv` (same state-dict names); its kernels are derived buffers."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.register_buffer("kernels", phase_kernels(conv.weight.detach()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(x, self.kernels, self.conv.bias)


class FoldedUpsample2D(SubPixelConv):
    """diffusers' `Upsample2D` (nearest 2×, then its 3×3 conv) computed by `upsample_conv`. An explicit
    `output_size` other than twice the input (odd sizes) is upsampled and convolved as diffusers does."""

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        if output_size is not None and tuple(output_size) != tuple(2 * n for n in hidden_states.shape[-2:]):
            return self.conv(F.interpolate(hidden_states, size=output_size, mode="nearest"))
        return super().forward(hidden_states)


def _foldable_upsample2d(module: nn.Module) -> bool:
    from diffusers.models.upsampling import Upsample2D

    return (isinstance(module, Upsample2D) and module.use_conv and module.interpolate and module.norm is None
            and not module.use_conv_transpose and module.name == "conv" and _foldable_conv(module.conv))


def fold_upsamplers(model: nn.Module) -> nn.Module:
    """Replace, in place, every diffusers `Upsample2D` of `model` (nearest 2×, then a 3×3 conv) by a
    `FoldedUpsample2D`, and return `model`.

    model: a module tree this caller owns (a weight-sharing copy), never a model other code runs as
        diffusers built it. State-dict names are unchanged (the conv stays `...upsamplers.0.conv`).

    TAESD's decoder upsamples the same way with 64 channels, where the four small convolutions and
    the interleave measured no faster in OpenVINO on a CPU (the work there is memory-bound), so only
    `Upsample2D` (UNets: 320–1280 channels; the full VAE decoder: 128–512) is folded.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _foldable_upsample2d(child):
                setattr(parent, name, FoldedUpsample2D(child.conv))
    return model
