"""The UNet with the bank as a pure function of tensors, and the row → stage layout of a stream call.

`BankedUNet.forward(sample, timestep, *conditioning, *bank) -> (noise_pred, *new_entries)`
(`conditioning`: the text K/V, SDXL's added conditioning, IP-Adapter and ControlNet inputs,
`livediff.networks.unet_input_names`)
with the tensor layout documented in `pipelines.bank.layout`: every shape is fixed by the
resolution and the settings, so the same module runs eagerly and can be exported (ONNX/TensorRT)
or captured (CUDA graphs) with the bank on. The `FeatureBank` object stays outside: it gives each
call its per-row bank slices and applies FIFO/merged updates between calls.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from livediff.cross_attention import CrossAttentionLayout, cross_attention_call
from livediff.networks import by_name, run_unet, text_layout, unet_conditioning, unet_input_names
from livediff.pipelines.bank.attention import BankCall, bank_call, banked_copy
from livediff.pipelines.bank.layout import BankLayout


class BankedUNet(nn.Module):
    """A diffusers UNet with the bank: runs a weight-sharing copy of it (`banked_copy`) whose
    processors get the bank tensors of each call through a `BankCall` and return its new entries.

    token_merge_ratio, fusion_threshold and fusion_strength are constants of the function (an
    exported graph bakes them in); the layout fixes which layers take bank inputs.
    """

    name = "banked_unet"

    def __init__(self, unet, layout: BankLayout, token_merge_ratio: float = 0.0, fusion_threshold: float = 2.0,
                 fusion_strength: float = 0.0, controlnets: Sequence[nn.Module] = (),
                 image: CrossAttentionLayout | None = None):
        super().__init__()
        self.unet, self._slot = banked_copy(unet)
        self.text = text_layout(unet)
        self.controlnets = nn.ModuleList(controlnets)  # their own attention: no bank, no prompt cache
        self.layout = layout
        self.token_merge_ratio = token_merge_ratio
        self.fusion_threshold = fusion_threshold
        self.fusion_strength = fusion_strength
        self.image = image  # IP-Adapter: its cross-attention layers take image K/V inputs

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*unet_input_names(self.unet.config, self.text, len(self.controlnets), self.image),
                *(n for n, _ in self.layout.input_shapes(1)))

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("noise_pred", *(n for n, _ in self.layout.output_shapes(1)))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                *conditioning_and_bank: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = by_name(self.input_names, (sample, timestep, *conditioning_and_bank))
        c = unet_conditioning(named, self.unet.config, self.text, len(self.controlnets), self.image)
        kv, out = self.layout.read_inputs(named)
        call = BankCall(latent_hw=(sample.shape[-2], sample.shape[-1]), token_merge_ratio=self.token_merge_ratio,
                        kv=kv, out=out, fusion_threshold=self.fusion_threshold, fusion_strength=self.fusion_strength)
        with bank_call(self._slot, call), cross_attention_call(self._slot.cross, self.text, c.text_kv, self.image,
                                                               c.image_kv):
            noise_pred = run_unet(self.unet, sample, timestep, c.text, c.added, self.controlnets, c.controls,
                                  c.scales)
        new = [t for e in self.layout.kv for t in call.new_kv[e.layer]]
        new += [call.new_out[e.layer] for e in self.layout.out]
        return (noise_pred, *new)


@dataclass(frozen=True)
class RowLayout:
    """Rows of one stream UNet call: `stages[b]` is row b's stage; the first `extra` rows are the
    unconditional CFG rows (`rcfg.unet_rows` puts them first: a copy of every row with `full`, of
    the entering frames with `initialize`), the rest are the stream rows, F per stage, in order."""

    stages: tuple[int, ...]
    extra: int
    present: tuple[int, ...]

def call_rows(first: int, last: int, frames: int, rows: int) -> RowLayout:
    """The layout of a call on the stream rows of stages first..last−1 with `rows` rows in all.

    Worked out from what the stream batch knows as Python ints, never read back from the device
    (a GPU would have to stop for that at every frame).
    """
    stream = tuple(stage for stage in range(first, last) for _ in range(frames))
    extra = rows - len(stream)
    if not 0 <= extra <= len(stream):
        raise ValueError(f"{rows} rows cannot hold the {len(stream)} stream rows of stages {first}..{last - 1}")
    return RowLayout(stages=stream[:extra] + stream, extra=extra, present=tuple(range(first, last)))
