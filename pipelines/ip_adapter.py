"""IP-Adapter on the stream: a style image conditions every frame next to the prompt.

A reference image is encoded once per change (CLIP vision encoder → the adapter's image
projection → a few image tokens); the keys and values of those tokens in every cross-attention
layer are computed then too, with the scale folded into the values, and reach the UNet as inputs
(`livediff.cross_attention`). So a frame costs one extra small attention per cross-attention layer and
nothing else; `set_style_image` and `set_ip_adapter_scale` act on the next frame without a rebuild.
Like diffusers, the unconditional CFG rows see the projection of a zero image embedding (basic
IP-Adapter) or of a black image's encoder states (IP-Adapter Plus).

`model`: an IP-Adapter weight file (`.safetensors` or `.bin` in the original layout, keys
`image_proj.*` and `ip_adapter.*`) as a local path or `owner/repo/path/in/repo`, or `random`;
`image_encoder`: a CLIPVisionModelWithProjection as hub id or local folder, or `random`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from livediff.errors import ConfigError, InputError, ModelNotAvailableError
from livediff.cross_attention import CrossAttentionLayout
from livediff.pipelines import checks
from livediff.pipelines.pixel_limit import DEFAULT_MAX_PIXELS, check_pixel_count

#: the random image encoder: a small CLIP vision tower, for tests and speed
RANDOM_ENCODER = dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                      num_attention_heads=2, image_size=32, patch_size=8)
EXAMPLE_MODEL = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"
EXAMPLE_ENCODER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class IPAdapterSpec:
    """An IP-Adapter: its weights, its image encoder and the initial scale (0..2; 0 switches it off)."""

    model: str
    image_encoder: str
    scale: float = 0.6

    def __post_init__(self):
        for name in ("model", "image_encoder"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"ip_adapter {name} {value!r} must be a path, a hub id or 'random'")
        if self.model != "random" and not self.model.endswith(WEIGHT_SUFFIXES):
            raise ConfigError(f"ip_adapter model {self.model!r} is not an IP-Adapter weight file; use a "
                              f"{'/'.join(WEIGHT_SUFFIXES)} file (local or owner/repo/path, e.g. {EXAMPLE_MODEL!r}) "
                              f"or 'random'")
        checks.number("ip_adapter scale", self.scale, 0.0, 2.0)

    @classmethod
    def parse(cls, value: Any) -> "IPAdapterSpec | None":
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return checks.from_options("ip_adapter", cls, value)
        raise ConfigError(f"ip_adapter {value!r} must be a dict with model, image_encoder and scale")


class IPAdapter(nn.Module):
    """The adapter's networks: the image encoder, the image projection and, per cross-attention
    layer, the image key/value projections (`to_k_ip`, `to_v_ip`)."""

    def __init__(self, encoder, projection: nn.Module, to_k: list[nn.Linear], to_v: list[nn.Linear],
                 layout: CrossAttentionLayout, plus: bool):
        super().__init__()
        self.encoder = encoder
        self.projection = projection
        self.to_k = nn.ModuleList(to_k)
        self.to_v = nn.ModuleList(to_v)
        self.layout = layout
        self.plus = plus  # IP-Adapter Plus reads the encoder's penultimate hidden states, not its embedding

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    @property
    def image_size(self) -> int:
        return self.encoder.config.image_size

    @torch.no_grad()
    def embeddings(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP-normalised (1,3,S,S) pixels → (unconditional, conditional) image tokens (1, n, C)."""
        pixels = pixels.to(self.encoder.device, self.encoder.dtype)
        if self.plus:
            states = self.encoder(torch.cat([torch.zeros_like(pixels), pixels]), output_hidden_states=True)
            uncond, cond = states.hidden_states[-2].chunk(2)
        else:
            cond = self.encoder(pixels).image_embeds
            uncond = torch.zeros_like(cond)
        return self.projection(uncond), self.projection(cond)

    @torch.no_grad()
    def keys_values(self, tokens: torch.Tensor, scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(1, n, C) image tokens → the key and the scaled value of every layer, in layout order."""
        out = []
        for to_k, to_v in zip(self.to_k, self.to_v):
            out += [to_k(tokens).to(dtype), (to_v(tokens) * scale).to(dtype)]
        return tuple(out)


def clip_pixels(image, size: int) -> torch.Tensor:
    """An image (PIL, array, (3,H,W)/(1,3,H,W) tensor in [0,1] or a local file path) → (1,3,size,size)
    pixels as CLIP's image processor makes them (shortest side to `size`, centre crop, CLIP mean/std)."""
    if isinstance(image, Image.Image):  # one opened from a file is decoded by the processor: check its header first
        check_pixel_count(*image.size, DEFAULT_MAX_PIXELS, "the style image",
                          "pass it as an array (an array is already decoded, so it is not limited)")
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    picture = _style_picture(image)
    try:
        return processor(images=picture, return_tensors="pt").pixel_values
    except (ValueError, TypeError) as exc:
        raise InputError(f"the style image could not be read as a picture: {exc}") from exc


def _style_picture(image):
    """A PIL image or a non-empty array with finite values, never a URL: transformers' processor would
    fetch one, and a stream makes no network requests the user did not ask for."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        if "://" in str(image):
            raise InputError(f"style image {str(image)!r} is a URL; livediff reads local files and pictures only "
                             f"(download it first)")
        try:
            with Image.open(image) as opened:
                check_pixel_count(*opened.size, DEFAULT_MAX_PIXELS, f"style image {str(image)!r}",
                                  "pass it as an array (an array is already decoded, so it is not limited)")
                image = opened.convert("RGB")
        except OSError as exc:
            raise InputError(f"cannot read style image {str(image)!r}: {exc}") from exc
    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        tensor = tensor[0] if tensor.ndim == 4 else tensor
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise InputError(f"a style image tensor must be (3,H,W) or (1,3,H,W) in [0,1], got {tuple(image.shape)}")
        if not torch.isfinite(tensor).all():
            raise InputError("the style image tensor holds NaN or infinite values; it must be in [0,1]")
        image = tensor.clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy()
    if isinstance(image, Image.Image):
        if image.width * image.height == 0:
            raise InputError(f"the style image is {image.width}x{image.height} pixels; it must have at least one")
        return image
    if not isinstance(image, np.ndarray):
        raise InputError(f"a style image must be a PIL image, an array, a tensor in [0,1] or a local file path, "
                         f"not {type(image).__name__}")
    if image.size == 0:
        raise InputError(f"the style image array of shape {image.shape} is empty")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError("the style image array holds NaN or infinite values")
    return image


# --- loading -------------------------------------------------------------------------------------

def random_state_dict(unet, embed_dim: int, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """A basic IP-Adapter in the original file layout with random weights, for `unet` and an image
    encoder with `embed_dim`-wide embeddings (tests save it and load it in diffusers as well)."""
    generator = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    tokens = 4
    layout = CrossAttentionLayout.of(unet, tokens)

    def draw(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    image_proj = {"proj.weight": draw(tokens * cross, embed_dim), "proj.bias": draw(tokens * cross),
                  "norm.weight": 1 + draw(cross), "norm.bias": draw(cross)}
    ip = {}
    for i, width in enumerate(layout.widths):
        ip[f"{2 * i + 1}.to_k_ip.weight"] = draw(width, cross)
        ip[f"{2 * i + 1}.to_v_ip.weight"] = draw(width, cross)
    return {"image_proj": image_proj, "ip_adapter": ip}


def _weight_file(model: str) -> Path:
    path = Path(model)
    if path.is_file():
        return path
    parts = model.split("/")
    if len(parts) < 3 or model.startswith((".", "/")):
        raise ConfigError(f"IP-Adapter {model!r} is not a file; use a local .safetensors/.bin file, a hub file as "
                          f"owner/repo/path (e.g. {EXAMPLE_MODEL!r}), or 'random'")
    from huggingface_hub import hf_hub_download

    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=True))
        except OSError:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false", "False"}:
                raise
            return Path(hf_hub_download(repo, filename))
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"IP-Adapter {model!r} is neither in the local Hugging Face cache nor reachable "
                                     f"from here: download it on a connected machine (huggingface-cli download "
                                     f"{repo} {filename}) or pass the local file.") from exc


def _read_weights(path: Path):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in load_file(str(path)).items():
            group, _, rest = key.partition(".")
            if group in out:
                out[group][rest] = value
        return out
    return torch.load(str(path), map_location="cpu", weights_only=True)


def read_state_dict(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter file → {"image_proj": ..., "ip_adapter": ...} (both files' layouts)."""
    try:
        out = _read_weights(path)
    except Exception as exc:  # torch.load and safetensors raise anything from IndexError to pickle errors
        raise ConfigError(f"{path} cannot be read as an IP-Adapter weight file ({type(exc).__name__}: "
                          f"{exc})") from exc
    if not isinstance(out, dict) or not out.get("image_proj") or not out.get("ip_adapter"):
        raise ConfigError(f"{path} is not an IP-Adapter weight file (no image_proj / ip_adapter weights)")
    return out


def _image_encoder(name: str, seed: int):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from livediff.pipelines.models import named_pretrained
    from livediff.pipelines.presets import random_weights

    if name == "random":
        return random_weights(seed, lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**RANDOM_ENCODER)))
    return named_pretrained(CLIPVisionModelWithProjection, name, "IP-Adapter image encoder", EXAMPLE_ENCODER)


def load_ip_adapter(model: str, image_encoder: str, unet, seed: int = 0) -> IPAdapter:
    """The adapter for `unet` (only the basic and Plus layouts: FaceID needs a face model)."""
    encoder = _image_encoder(image_encoder, seed)
    embed_dim = encoder.config.projection_dim
    state = random_state_dict(unet, embed_dim, seed) if model == "random" else read_state_dict(_weight_file(model))
    image_proj = state["image_proj"]
    plus = "latents" in image_proj
    if not plus and "proj.weight" not in image_proj:
        raise ConfigError(f"IP-Adapter {model!r} is of a kind livediff does not run (FaceID or Full Face); use a basic "
                          f"or Plus IP-Adapter")
    projection = unet._convert_ip_adapter_image_proj_to_diffusers(image_proj, low_cpu_mem_usage=False)
    tokens = image_proj["latents"].shape[1] if plus else projection.num_image_text_embeds
    layout = CrossAttentionLayout.of(unet, tokens)
    to_k, to_v = [], []
    for i, width in enumerate(layout.widths):
        for kind, out in (("to_k_ip", to_k), ("to_v_ip", to_v)):
            weight = state["ip_adapter"].get(f"{2 * i + 1}.{kind}.weight")
            if weight is None or tuple(weight.shape) != (width, unet.config.cross_attention_dim):
                raise ConfigError(f"IP-Adapter {model!r} does not fit this model's cross-attention layers (layer "
                                  f"{layout.layers[i]}: {kind} of shape {width}x{unet.config.cross_attention_dim} "
                                  f"expected); is it for another model family?")
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight.data.copy_(weight)
            out.append(linear)
    return IPAdapter(encoder, projection, to_k, to_v, layout, plus)
