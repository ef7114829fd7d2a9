"""Where the attention layers of a diffusers UNet are, and the fixed tensor layout of the bank.

Bank tensor layout (what an exporter of `BankedUNet` needs). Axis 0 of every tensor is the
stream-batch row, like every other input and output of the networks; "per stage" storage lives in
`FeatureBank`, which hands each row the slice of its own stage before the call.

Inputs after (sample, timestep, encoder_hidden_states, *SDXL added conditioning), in this order:
  for each self-attention layer `layout.kv[i]` (UNet module order):
      kv{i}.k     (rows, L_i, C_i)   banked keys   (after to_k, heads concatenated)
      kv{i}.v     (rows, L_i, C_i)   banked values (after to_v)
      kv{i}.bias  (rows, L_i)        log of each slot's mass: 0 for one token, log m for a token
                                     standing for m tokens, -inf for an empty slot
  for each fusion layer `layout.out[j]`:
      out{j}.o    (rows, Lo_j, C_j)  banked attention outputs (after to_out)
      out{j}.bias (rows, Lo_j)       same meaning; only "finite = valid" is used
Outputs after noise_pred, in this order:
  for each `layout.kv[i]`:  kv{i}.k_new, kv{i}.v_new   (rows, T_i, C_i)  this call's keys/values
  for each `layout.out[j]`: out{j}.o_new               (rows, N_j, C_j)  this call's outputs (unfused)
with L_i = max_frames · kept_i, kept_i = T_i (dense) or the sparse budget, T_i = tokens of the
layer after token merging (N_i − r_i at the merged level, N_i elsewhere), N_i = h_i·w_i. All
sizes depend only on the resolution, the bank settings and the token-merge ratio, never on the
frame or on how full the bank is, so a compiled graph keeps them fixed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from livediff.pipelines.bank.sparse import budget
from livediff.errors import ConfigError


@dataclass(frozen=True)
class AttentionLayer:
    """One attention module of the UNet: its module path, block, resolution level and K/V width."""

    name: str
    block: str
    level: int
    channels: int
    cross: bool


def _block_and_level(name: str, down_levels: int) -> tuple[str, int]:
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return f"down_blocks.{parts[1]}", int(parts[1])
    if parts[0] == "up_blocks":
        return f"up_blocks.{parts[1]}", down_levels - 1 - int(parts[1])
    if parts[0] == "mid_block":
        return "mid_block", down_levels - 1
    raise ConfigError(f"attention layer {name!r} is outside the down/mid/up blocks of a UNet2DConditionModel")


def attention_layers(unet) -> list[AttentionLayer]:
    """Every transformer attention layer of a UNet2DConditionModel (SD1.5, SD2.x, SDXL layouts)."""
    from diffusers.models.attention_processor import Attention

    levels = len(unet.config.block_out_channels)
    layers = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention):
            continue
        block, level = _block_and_level(name, levels)
        layers.append(AttentionLayer(name=name, block=block, level=level, channels=module.to_k.out_features,
                                     cross=module.is_cross_attention))
    return layers


def grid_at(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """Token grid of a level: each downsampling halves the latent grid, rounding up."""
    h, w = latent_hw
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def default_fusion_blocks(layers: list[AttentionLayer]) -> tuple[str, ...]:
    """The method's choice: the mid block and the first (lowest-resolution) decoder block with attention."""
    self_blocks = {layer.block for layer in layers if not layer.cross}
    blocks = ["mid_block"] if "mid_block" in self_blocks else []
    up = sorted((b for b in self_blocks if b.startswith("up_blocks.")), key=lambda b: int(b.split(".")[1]))
    return tuple(blocks + up[:1])


def resolve_fusion_blocks(layers: list[AttentionLayer], requested: tuple[str, ...] | None) -> tuple[str, ...]:
    if requested is None:
        return default_fusion_blocks(layers)
    available = sorted({layer.block for layer in layers if not layer.cross})
    unknown = [b for b in requested if b not in available]
    if unknown:
        raise ConfigError(f"bank fusion_blocks {unknown} are not blocks with self-attention in this UNet; "
                          f"choose from {available}")
    return tuple(requested)


@dataclass(frozen=True)
class BankEntry:
    """One banked layer. tokens: T, what one row writes per call; grid: (h, w) of the layer before
    token merging; kept: tokens banked per frame; capacity: L = max_frames · kept."""

    layer: str
    tokens: int
    grid: tuple[int, int]
    channels: int
    kept: int
    capacity: int

    @property
    def spatial(self) -> bool:
        """Tokens are the grid positions in order (not token-merged), so motion can select them."""
        return self.tokens == self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class BankLayout:
    """The static shapes of the bank for one resolution and configuration (see the module docstring).

    kv: layers with extended self-attention; out: layers with feature fusion. Empty when the bank
    is off (the banked UNet then only applies token merging).
    """

    max_frames: int
    kv: tuple[BankEntry, ...]
    out: tuple[BankEntry, ...]

    @classmethod
    def build(cls, layers: list[AttentionLayer], latent_hw: tuple[int, int], max_frames: int,
              keep_ratio: float, fusion_blocks: tuple[str, ...], merged_tokens) -> "BankLayout":
        """`merged_tokens(layer, grid)` gives T for a self-attention layer (token merging may shrink it)."""

        def entry(layer: AttentionLayer, tokens: int) -> BankEntry:
            grid = grid_at(latent_hw, layer.level)
            kept = budget(tokens, keep_ratio)
            return BankEntry(layer=layer.name, tokens=tokens, grid=grid, channels=layer.channels, kept=kept,
                             capacity=max_frames * kept)

        self_layers = [layer for layer in layers if not layer.cross]
        kv = tuple(entry(layer, merged_tokens(layer, grid_at(latent_hw, layer.level))) for layer in self_layers)
        out = tuple(entry(layer, grid_at(latent_hw, layer.level)[0] * grid_at(latent_hw, layer.level)[1])
                    for layer in self_layers if layer.block in fusion_blocks)
        return cls(max_frames=max_frames, kv=kv, out=out)

    @classmethod
    def empty(cls) -> "BankLayout":
        return cls(max_frames=0, kv=(), out=())

    def input_shapes(self, rows: int) -> list[tuple[str, tuple[int, ...]]]:
        shapes = []
        for i, e in enumerate(self.kv):
            shapes += [(f"kv{i}.k", (rows, e.capacity, e.channels)), (f"kv{i}.v", (rows, e.capacity, e.channels)),
                       (f"kv{i}.bias", (rows, e.capacity))]
        for j, e in enumerate(self.out):
            shapes += [(f"out{j}.o", (rows, e.capacity, e.channels)), (f"out{j}.bias", (rows, e.capacity))]
        return shapes

    def read_inputs(self, named: Mapping[str, torch.Tensor]) -> tuple[
            dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """The bank inputs of a call by layer, from the call's inputs by name (`input_shapes`' names):
        (self-attention layer → (k, v, bias), fusion layer → (o, bias))."""
        kv = {e.layer: (named[f"kv{i}.k"], named[f"kv{i}.v"], named[f"kv{i}.bias"]) for i, e in enumerate(self.kv)}
        out = {e.layer: (named[f"out{j}.o"], named[f"out{j}.bias"]) for j, e in enumerate(self.out)}
        return kv, out

    def output_shapes(self, rows: int) -> list[tuple[str, tuple[int, ...]]]:
        shapes = []
        for i, e in enumerate(self.kv):
            shapes += [(f"kv{i}.k_new", (rows, e.tokens, e.channels)), (f"kv{i}.v_new", (rows, e.tokens, e.channels))]
        for j, e in enumerate(self.out):
            shapes.append((f"out{j}.o_new", (rows, e.tokens, e.channels)))
        return shapes
