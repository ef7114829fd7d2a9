"""The networks as pure tensor functions: tensors in, tensors out, no Python objects.

They sit below both `accelerators` (which run a function given its shape spec and know nothing of
streams) and `pipelines` (which choose the functions and the rows per call). This is the form every
backend runs: eager calls them, `compile` compiles them, ONNX export traces
them. Each one knows its input/output names, example inputs for a given row count and resolution,
which axes may vary, and the shapes of its outputs (so GPU backends can allocate them up front).
The UNet takes its timestep as float32: diffusers casts it to float for the sinusoidal embedding
anyway, and float inputs avoid int64 tensors in engines.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from livediff.errors import ConfigError
from livediff.cross_attention import (CrossAttentionLayout, cross_attention_call, input_kv_processors,
                                      weight_sharing_copy)
from livediff.subpixel import fold_upsamplers

Shape = tuple[int, ...]


class TensorFunction(nn.Module):
    """Base of the exportable networks; `rows` is always axis 0 of every input and output."""

    name: str = ""
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    spatial_multiple: int = 8
    stream_rows: bool = True  # rows follow the stream batch (`pipelines.stream.stream_rows`); False: one per frame

    def variant(self) -> tuple | None:
        """What a graph bakes in beyond weights and sizes (bank shapes, constants); part of cache keys."""
        return None

    def state_inputs(self) -> tuple[int, ...]:
        """Positions of inputs that are long-lived state updated in place between calls (a CUDA
        graph may read them where they live instead of copying them in)."""
        return ()

    def example_inputs(self, rows: int, height: int, width: int, dtype: torch.dtype,
                       device: torch.device | str) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def output_shapes(self, inputs: Sequence[torch.Tensor]) -> list[Shape]:
        raise NotImplementedError

    def spatial_axes(self) -> dict[str, tuple[int, int, int]]:
        """input name → (height axis, width axis, pixels per element on those axes), for dynamic resolution.

        Sizes along them change in steps of `spatial_multiple` pixels."""
        raise NotImplementedError

    def adapt_inputs(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What callers pass → what the function takes (dtype casts, contiguous memory)."""
        return tuple(t.contiguous() for t in inputs)

    def grouped_like_forward(self, per_input: list) -> tuple:
        """Per-input values (e.g. torch.export dynamic shapes) grouped like `forward`'s parameters."""
        return tuple(per_input)


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def added_conditions(unet_config) -> tuple[tuple[str, int], ...]:
    """(name, width) of the UNet's added-conditioning inputs: none for
    SD 1.x/2.x; SDXL's pooled text embedding and its six size ids (`pipelines.prompts`)."""
    if unet_config.addition_embed_type != "text_time":
        return ()
    pooled = unet_config.projection_class_embeddings_input_dim - 6 * unet_config.addition_time_embed_dim
    return (("text_embeds", pooled), ("time_ids", 6))


#: CLIP's context length: the prompt length of every SD family
TEXT_TOKENS = 77


def text_layout(unet) -> CrossAttentionLayout:
    """The UNet's cross-attention layers, which take the prompt's keys and values as inputs."""
    return CrossAttentionLayout.of(unet, TEXT_TOKENS, kind="text")


def unet_input_names(unet_config, text: CrossAttentionLayout, controls: int = 0,
                     image: CrossAttentionLayout | None = None) -> tuple[str, ...]:
    """The UNet's inputs in order: sample and timestep; with ControlNets the text embeddings (their
    own cross-attention reads them); SDXL's added conditioning; the text key and value of every
    cross-attention layer (`livediff.cross_attention`); with an IP-Adapter the image ones; then with
    ControlNets one control image per ControlNet and their scales (one row of scales per UNet row)."""
    names = ("sample", "timestep", *(("encoder_hidden_states",) if controls else ()),
             *(name for name, _ in added_conditions(unet_config)), *text.input_names())
    if image is not None:
        names += image.input_names()
    if controls:
        names += (*(f"control_{i}" for i in range(controls)), "control_scales")
    return names


@dataclass(frozen=True)
class UNetConditioning:
    """The UNet's inputs after sample and timestep, read by name (`unet_conditioning`).

    text: the text embeddings (with ControlNets only), added: SDXL's added conditioning, text_kv and
    image_kv: the cross-attention keys and values, controls: one control image per ControlNet,
    scales: their (rows, ControlNets) scales."""

    text: torch.Tensor | None
    added: tuple[torch.Tensor, ...]
    text_kv: tuple[torch.Tensor, ...]
    image_kv: tuple[torch.Tensor, ...]
    controls: tuple[torch.Tensor, ...]
    scales: torch.Tensor | None


def by_name(names: Sequence[str], values: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """A function's positional inputs (as a graph passes them) named by its `input_names`."""
    if len(values) != len(names):
        raise ValueError(f"the function takes {len(names)} inputs ({', '.join(names)}), got {len(values)}")
    return dict(zip(names, values))


def unet_conditioning(named: dict[str, torch.Tensor], unet_config, text: CrossAttentionLayout, controls: int = 0,
                      image: CrossAttentionLayout | None = None) -> UNetConditioning:
    """The conditioning inputs of `unet_input_names` picked out of `named` by their names."""
    return UNetConditioning(
        text=named["encoder_hidden_states"] if controls else None,
        added=tuple(named[name] for name, _ in added_conditions(unet_config)),
        text_kv=tuple(named[name] for name in text.input_names()),
        image_kv=tuple(named[name] for name in image.input_names()) if image is not None else (),
        controls=tuple(named[f"control_{i}"] for i in range(controls)),
        scales=named["control_scales"] if controls else None)


def unet_example_inputs(unet_config, text: CrossAttentionLayout, rows: int, latent_hw: tuple[int, int],
                        dtype: torch.dtype, device: torch.device | str, controls: int = 0, vae_scale_factor: int = 8,
                        image: CrossAttentionLayout | None = None) -> tuple[torch.Tensor, ...]:
    """Example values of every input of `unet_input_names` for `rows` rows."""
    base = (torch.randn(rows, unet_config.in_channels, *latent_hw, dtype=dtype, device=device),
            torch.linspace(999, 1, rows, dtype=torch.float32, device=device))
    embeddings = ((torch.randn(rows, text.tokens, unet_config.cross_attention_dim, dtype=dtype, device=device),)
                  if controls else ())
    added = tuple(torch.randn(rows, width, dtype=dtype, device=device) * (512 if name == "time_ids" else 1)
                  for name, width in added_conditions(unet_config))
    pixels = tuple(n * vae_scale_factor for n in latent_hw)
    control = tuple(torch.rand(rows, 3, *pixels, dtype=dtype, device=device) for _ in range(controls))
    scales = (torch.ones(rows, controls, dtype=dtype, device=device),) if controls else ()
    image_kv = image.example_inputs(rows, dtype, device) if image is not None else ()
    return (*base, *embeddings, *added, *text.example_inputs(rows, dtype, device), *image_kv, *control, *scales)


def run_unet(unet, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
             added: Sequence[torch.Tensor], controlnets: Sequence[nn.Module] = (),
             controls: Sequence[torch.Tensor] = (), scales: torch.Tensor | None = None) -> torch.Tensor:
    """The diffusers UNet's noise prediction, with the added conditioning as diffusers names it and
    the ControlNets' residuals, each scaled per row (`scales[:, i]`), summed into the skip connections.
    The UNet's own cross-attention reads its K/V inputs (`cross_attention_call`), not the text
    embeddings, which only ControlNets need."""
    names = [name for name, _ in added_conditions(unet.config)]
    if len(added) != len(names):
        raise ValueError(f"this UNet takes {len(names)} added conditioning inputs {names}, got {len(added)}")
    added_cond = dict(zip(names, added)) if names else None
    down, mid = None, None
    for i, (controlnet, image) in enumerate(zip(controlnets, controls)):
        scale = scales[:, i].view(-1, 1, 1, 1)
        net_down, net_mid = controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                       controlnet_cond=image, added_cond_kwargs=added_cond, return_dict=False)
        net_down, net_mid = [d * scale for d in net_down], net_mid * scale
        down = net_down if down is None else [a + b for a, b in zip(down, net_down)]
        mid = net_mid if mid is None else mid + net_mid
    return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond,
                down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False)[0]


def unet_variant(added: int, controlnets: int, image: CrossAttentionLayout | None) -> tuple:
    """What, besides the model, makes a UNet graph different (part of engine cache keys)."""
    return ((("text_kv", TEXT_TOKENS),) + (("sdxl",) if added else ())
            + ((("controlnets", controlnets),) if controlnets else ())
            + ((("ip_adapter", image.tokens),) if image is not None else ()))


class UNetFunction(TensorFunction):
    """(sample, timestep, [text embeddings], *added conditions, *text K/V, *image K/V, *control images,
    control scales) → noise prediction, one row per stream-batch row (`unet_input_names`)."""

    name = "unet"
    output_names = ("noise_pred",)

    def __init__(self, unet, vae_scale_factor: int = 8, controlnets: Sequence[nn.Module] = (),
                 image: CrossAttentionLayout | None = None):
        super().__init__()
        # a weight-sharing copy: its upsamplers folded, its cross-attention on K/V inputs
        self.unet = fold_upsamplers(weight_sharing_copy(unet))
        self.text = text_layout(unet)
        self.slot = input_kv_processors(self.unet, self.text)
        self.image = image
        self.controlnets = nn.ModuleList(controlnets)
        self.vae_scale_factor = vae_scale_factor
        self.spatial_multiple = vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        self.input_names = unet_input_names(unet.config, self.text, len(controlnets), image)
        self.added = len(added_conditions(unet.config))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, *conditioning: torch.Tensor) -> torch.Tensor:
        c = unet_conditioning(by_name(self.input_names, (sample, timestep, *conditioning)), self.unet.config,
                              self.text, len(self.controlnets), self.image)
        with cross_attention_call(self.slot, self.text, c.text_kv, self.image, c.image_kv):
            return run_unet(self.unet, sample, timestep, c.text, c.added, self.controlnets, c.controls, c.scales)

    def variant(self) -> tuple | None:
        return unet_variant(self.added, len(self.controlnets), self.image) or None

    def example_inputs(self, rows, height, width, dtype, device):
        f = self.vae_scale_factor
        return unet_example_inputs(self.unet.config, self.text, rows, (height // f, width // f), dtype, device,
                                   len(self.controlnets), f, self.image)

    def output_shapes(self, inputs):
        sample = inputs[0]
        return [(sample.shape[0], self.unet.config.out_channels, *sample.shape[2:])]

    def spatial_axes(self):
        return {"sample": (2, 3, self.vae_scale_factor),
                **{f"control_{i}": (2, 3, 1) for i in range(len(self.controlnets))}}

    def adapt_inputs(self, sample, timestep, *conditioning):
        return (sample.contiguous(), timestep.to(torch.float32).contiguous(), *(t.contiguous() for t in conditioning))

    def grouped_like_forward(self, per_input: list) -> tuple:
        return (*per_input[:2], tuple(per_input[2:]))


class VaeEncoderFunction(TensorFunction):
    """Images in [-1,1] → latents scaled for the UNet.

    Both VAE functions compute in the VAE's own dtype and hand back the stream's: SDXL's VAE
    overflows in float16 and is kept in float32 under a float16 stream (`pipelines.models`).

    Uses the distribution's mean, not a sample, so the same frame always gives the same latent (a
    sample would add flicker). TAESD (AutoencoderTiny) is deterministic already.
    """

    name = "vae_encoder"
    input_names = ("images",)
    output_names = ("latents",)
    stream_rows = False

    def __init__(self, vae, vae_scale_factor: int):
        super().__init__()
        self.vae = vae
        self.scale = float(vae.config.scaling_factor)
        from diffusers import AutoencoderTiny

        self.tiny = isinstance(vae, AutoencoderTiny)
        self.vae_scale_factor = vae_scale_factor
        self.latent_channels = vae.config.latent_channels
        self.spatial_multiple = vae_scale_factor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        encoded = self.vae.encode(images.to(_parameter_dtype(self.vae)))
        latents = encoded.latents if self.tiny else encoded.latent_dist.mean
        return (latents * self.scale).to(images.dtype)

    def example_inputs(self, rows, height, width, dtype, device):
        return (torch.rand(rows, 3, height, width, dtype=dtype, device=device) * 2 - 1,)

    def output_shapes(self, inputs):
        images = inputs[0]
        f = self.vae_scale_factor
        return [(images.shape[0], self.latent_channels, images.shape[2] // f, images.shape[3] // f)]

    def spatial_axes(self):
        return {"images": (2, 3, 1)}


class VaeDecoderFunction(TensorFunction):
    """Scaled latents → images in about [-1,1]."""

    name = "vae_decoder"
    input_names = ("latents",)
    output_names = ("images",)
    stream_rows = False

    def __init__(self, vae, vae_scale_factor: int):
        super().__init__()
        self.vae = fold_upsamplers(weight_sharing_copy(vae))  # the full VAE's upsamplers; TAESD has none
        self.scale = float(vae.config.scaling_factor)
        self.vae_scale_factor = vae_scale_factor
        self.latent_channels = vae.config.latent_channels
        self.spatial_multiple = vae_scale_factor

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode((latents / self.scale).to(_parameter_dtype(self.vae)), return_dict=False)[0]
        return images.to(latents.dtype)

    def example_inputs(self, rows, height, width, dtype, device):
        f = self.vae_scale_factor
        return (torch.randn(rows, self.latent_channels, height // f, width // f, dtype=dtype, device=device),)

    def output_shapes(self, inputs):
        latents = inputs[0]
        f = self.vae_scale_factor
        return [(latents.shape[0], 3, latents.shape[2] * f, latents.shape[3] * f)]

    def spatial_axes(self):
        return {"latents": (2, 3, self.vae_scale_factor)}


def stream_networks(models) -> dict[str, TensorFunction]:
    """The three networks every stream pipeline runs, as pure functions over the shared modules."""
    factor = models.vae_scale_factor
    return {
        "unet": UNetFunction(models.unet, factor, models.controlnets, models.image_prompt_layout).eval(),
        "vae_encoder": VaeEncoderFunction(models.vae, factor).eval(),
        "vae_decoder": VaeDecoderFunction(models.vae, factor).eval(),
    }


class BankedUNetFunction(TensorFunction):
    """The UNet with the feature bank (`pipelines.bank.unet.BankedUNet`) as a function of tensors.

    Inputs: the UNet's (`unet_input_names`), then the bank; outputs: (noise_pred, *new entries),
    laid out as `pipelines.bank.layout` documents. Bank sizes follow from the resolution, so the
    graph's resolution is static; only the rows axis varies, like the plain UNet's.
    """

    name = "banked_unet"

    def __init__(self, banked, vae_scale_factor: int = 8):
        super().__init__()
        self.banked = banked
        self.vae_scale_factor = vae_scale_factor
        self.input_names = tuple(banked.input_names)
        self.output_names = tuple(banked.output_names)
        config = banked.unet.config
        self.unet_config = config
        self.out_channels = config.out_channels
        self.added = len(added_conditions(config))
        self.controls = len(banked.controlnets)
        self.image = banked.image
        self.spatial_multiple = vae_scale_factor * 2 ** (len(config.block_out_channels) - 1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                *conditioning_and_bank: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.banked(sample, timestep, *conditioning_and_bank)

    def state_inputs(self) -> tuple[int, ...]:
        unet_inputs = unet_input_names(self.unet_config, self.banked.text, self.controls, self.image)
        return tuple(range(len(unet_inputs), len(self.input_names)))

    def variant(self) -> tuple:
        banked = self.banked
        return (("family", "sdxl" if self.added else "sd"), *unet_variant(self.added, self.controls, self.image), ("bank", tuple(shape for _, shape in banked.layout.input_shapes(1))),
                ("token_merge_ratio", float(banked.token_merge_ratio)),
                ("fusion", float(banked.fusion_threshold), float(banked.fusion_strength)))

    def example_inputs(self, rows, height, width, dtype, device):
        f = self.vae_scale_factor
        base = unet_example_inputs(self.unet_config, self.banked.text, rows, (height // f, width // f), dtype, device,
                                   self.controls, f, self.image)
        bank = [torch.zeros(shape, dtype=dtype, device=device) if name.endswith(".bias")
                else torch.randn(shape, dtype=dtype, device=device)
                for name, shape in self.banked.layout.input_shapes(rows)]
        return (*base, *bank)

    def output_shapes(self, inputs):
        sample = inputs[0]
        rows = sample.shape[0]
        return [(rows, self.out_channels, *sample.shape[2:]),
                *(shape for _, shape in self.banked.layout.output_shapes(rows))]

    def spatial_axes(self):
        raise ConfigError("the banked UNet's graph has a static resolution (its bank sizes follow from it); "
                          "build it without a resolution range")

    def grouped_like_forward(self, per_input: list) -> tuple:
        return (*per_input[:2], tuple(per_input[2:]))  # forward takes the rest as *args

    def adapt_inputs(self, sample, timestep, *conditioning_and_bank):
        return (sample.contiguous(), timestep.to(torch.float32).contiguous(),
                *(t.contiguous() for t in conditioning_and_bank))
