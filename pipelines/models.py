"""Loading the networks: hub ids, local diffusers folders, single checkpoint files, or presets.

Two model families run: Stable Diffusion 1.x/2.x (`sd`) and SDXL (`sdxl`: SDXL-Turbo, SDXL with an
LCM-LoRA). The family is read from what is loaded (the folder's or hub repository's
`model_index.json`, a single file's tensor names), never from a flag.

Real loading is the default for users (`stabilityai/sd-turbo`). Presets (see `presets.py`) build
random-weight models from configs for tests and speed measurement. LoRAs (LCM-LoRA is the usual
one) are fused into the UNet once at load time so the per-frame cost is zero.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, LCMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from livediff.errors import ConfigError, ModelNotAvailableError
from livediff.pipelines.choices import DTYPE_NAMES
from livediff.pipelines.placement import place_network
from livediff.pipelines.presets import PRESETS, TINY_VAE_PRESETS, build_preset, build_tiny_vae

log = logging.getLogger(__name__)


@contextmanager
def quiet_hub_deprecations():
    """diffusers' own hub lookups pass huggingface_hub an argument it deprecated (`local_dir_use_symlinks`);
    users cannot act on that warning, so it is kept out of their output around our loading calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The `local_dir_use_symlinks` argument is deprecated")
        yield

#: float64 is for reference checks on the CPU (equalities that hold to 1e-9), not for use
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass
class ModelBundle:
    """The networks and the scheduler one pipeline runs, already on their device and dtype."""

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL | AutoencoderTiny
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: LCMScheduler
    loras: tuple[str, ...] = ()
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL
    tokenizer_2: CLIPTokenizer | None = None
    #: SDXL's `force_zeros_for_empty_prompt`: an empty negative prompt is zero embeddings, not encoded ""
    zero_empty_negative: bool = False
    controlnets: tuple = ()  # ControlNetModel, in the order of `StreamConfig.controlnet`
    control_preprocessors: tuple = ()  # per ControlNet: its preprocessor's network (depth, pose) or None
    ip_adapter: Any = None  # `pipelines.ip_adapter.IPAdapter` or None

    @property
    def image_prompt_layout(self):
        """The IP-Adapter's cross-attention layout (`livediff.cross_attention`), None without one."""
        return self.ip_adapter.layout if self.ip_adapter is not None else None

    @property
    def family(self) -> str:
        return family_of(self.unet)

    @property
    def vae_scale_factor(self) -> int:
        config = self.vae.config
        blocks = config.encoder_block_out_channels if isinstance(self.vae, AutoencoderTiny) else config.block_out_channels
        return 2 ** (len(blocks) - 1)

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type


#: diffusers pipeline classes (model_index.json `_class_name`) → family
PIPELINE_FAMILIES = {
    "StableDiffusionPipeline": "sd", "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
}


def family_of(unet) -> str:
    """`sdxl` when the UNet takes SDXL's added conditioning (pooled text + size ids), else `sd`."""
    return "sdxl" if unet.config.addition_embed_type == "text_time" else "sd"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not supported; choose one of {sorted(DTYPES)}")
    if name == "float16" and torch.device(device).type == "cpu":
        raise ConfigError("dtype 'float16' is not supported on device 'cpu'; use 'float32' or 'bfloat16' on CPU")
    if name == "float64" and torch.device(device).type != "cpu":
        raise ConfigError(f"dtype 'float64' is for reference checks on device 'cpu', not {device!r}; "
                          f"use 'float16', 'bfloat16' or 'float32'")
    return DTYPES[name]


def is_preset(model: str) -> bool:
    return model in PRESETS


def download_command(model: str) -> str:
    """The download command of the installed huggingface_hub: `hf` since 0.34, `huggingface-cli` before."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(part) for part in version("huggingface_hub").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return f"hf download {model}"
    return f"hf download {model}" if (major, minor) >= (0, 34) else f"huggingface-cli download {model}"


def offline_message(model: str, preset: str = "tiny", option: str = "model", kind: str = "Model") -> str:
    """One sentence for a `kind` of network that cannot be had from here, for CLI and Python users alike
    (`--model tiny` / `model='tiny'`): `option` is the setting that named it and `preset` the
    random-weight one to suggest instead (of the same kind: `tiny-wan-causal` for mode causal-video,
    a tiny VAE preset for --vae)."""
    flag = "--" + option.replace("_", "-")
    return (f"{kind} {model!r} is not in the local Hugging Face cache and cannot be downloaded from here: "
            f"run `{download_command(model)}` on a connected machine (or copy the folder here and pass its path "
            f"as {flag}), or use {flag} {preset} ({option}={preset!r} in Python) to try livediff without weights.")


def _pipeline_class(family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline


def _load_kwargs(family: str) -> dict:
    return {} if family == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)


def _family_of_index(model: str, index: dict) -> str:
    name = index.get("_class_name", "?")
    if name not in PIPELINE_FAMILIES:
        raise ConfigError(f"Model {model!r} is a {name}; livediff runs Stable Diffusion 1.x/2.x and SDXL models "
                          f"({', '.join(sorted(PIPELINE_FAMILIES))}).")
    return PIPELINE_FAMILIES[name]


def checkpoint_family(path: Path) -> str:
    """The family of a single-file checkpoint, from its tensor names (no weights read for .safetensors)."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as checkpoint:
                keys = set(checkpoint.keys())
        except Exception as exc:  # a truncated or foreign file: safetensors' errors have no common base
            raise ConfigError(f"Checkpoint file {str(path)!r} is not a readable .safetensors file ({exc}).") from exc
    else:
        from diffusers.loaders.single_file_utils import load_single_file_checkpoint

        keys = set(load_single_file_checkpoint(str(path)))
    if CHECKPOINT_KEY_NAMES["xl_base"] in keys:
        return "sdxl"
    if CHECKPOINT_KEY_NAMES["xl_refiner"] in keys:
        raise ConfigError(f"Checkpoint {str(path)!r} is an SDXL refiner, which only refines SDXL outputs; "
                          f"use an SDXL base or Turbo checkpoint.")
    return "sd"


def _load_components(model: str) -> dict:
    path = Path(model)
    if path.suffix in {".safetensors", ".ckpt"}:
        if not path.is_file():
            raise ModelNotAvailableError(f"Checkpoint file {model!r} does not exist.")
        family = checkpoint_family(path)
        pipe = _pipeline_class(family).from_single_file(str(path), **_load_kwargs(family))
    elif path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ConfigError(f"Folder {model!r} is not a diffusers model folder (no model_index.json in it).")
        family = _family_of_index(model, json.loads(index.read_text()))
        pipe = _pipeline_class(family).from_pretrained(str(path), **_load_kwargs(family))
    elif "/" in model and not model.startswith((".", "/")):
        pipe = _from_hub(model)
    elif model.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"Model path {model!r} does not exist; a local model is a diffusers folder "
                                     f"(with model_index.json) or a .safetensors file.")
    else:
        raise ConfigError(
            f"Unknown model {model!r}: use a Hugging Face hub id (e.g. 'stabilityai/sd-turbo'), a local diffusers "
            f"folder, a .safetensors file, or a preset ({', '.join(sorted(PRESETS))}).")
    components = dict(unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                      scheduler=LCMScheduler.from_config(pipe.scheduler.config), pipe=pipe)
    if getattr(pipe, "text_encoder_2", None) is not None:
        components.update(text_encoder_2=pipe.text_encoder_2, tokenizer_2=pipe.tokenizer_2,
                          zero_empty_negative=bool(pipe.config.get("force_zeros_for_empty_prompt", False)))
    return components


def _from_hub(model: str):
    with quiet_hub_deprecations():
        return _from_hub_quietly(model)


def _from_hub_quietly(model: str):
    from diffusers import DiffusionPipeline
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        index = DiffusionPipeline.load_config(model, local_files_only=True)
        family = _family_of_index(model, index)
        return _pipeline_class(family).from_pretrained(model, local_files_only=True, **_load_kwargs(family))
    except (OSError, LocalEntryNotFoundError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false", "False"}:
        raise ModelNotAvailableError(offline_message(model))
    size = _hub_size(model)
    log.warning("Weights for %s are not cached; fetching %s from the Hugging Face hub.", model,
                f"{size / 1e9:.1f} GB" if size else "them")
    try:
        family = _family_of_index(model, DiffusionPipeline.load_config(model))
        return _pipeline_class(family).from_pretrained(model, **_load_kwargs(family))
    except RepositoryNotFoundError:
        raise ModelNotAvailableError(f"Model {model!r} does not exist on the Hugging Face hub or is private.") from None
    except (OSError, ValueError):
        raise ModelNotAvailableError(offline_message(model)) from None


def _hub_size(model: str) -> int | None:
    """Bytes of the hub repository's files, asked before announcing a download, so that a machine
    without a connection hears one sentence about it instead of a "fetching" line and then an error."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(model, files_metadata=True, timeout=10)
    except GatedRepoError as exc:
        raise ModelNotAvailableError(f"Model {model!r} is gated on the Hugging Face hub: accept its licence on "
                                     f"huggingface.co and log in with `hf auth login`.") from exc
    except RepositoryNotFoundError:
        raise ModelNotAvailableError(f"Model {model!r} does not exist on the Hugging Face hub or is private.") from None
    except HfHubHTTPError:
        return None  # the hub answered; the download itself will say what is wrong
    except Exception:  # no route, DNS, proxy, TLS: the HTTP client's errors have no common base here
        raise ModelNotAvailableError(offline_message(model)) from None
    return sum(sibling.size or 0 for sibling in info.siblings or ()) or None


def from_folder_or_hub(cls, model: str, preset: str = "tiny", option: str = "model", kind: str = "Model"):
    """`cls.from_pretrained` for a local folder or a hub id (the local cache first), None for a name
    that is neither; a model that cannot be had from here is one sentence (`offline_message`, which
    suggests `preset` for `option`)."""
    path = Path(model)
    with quiet_hub_deprecations():
        try:
            if path.is_dir():
                return cls.from_pretrained(str(path))
            if "/" in model and not model.startswith((".", "/")):
                try:
                    return cls.from_pretrained(model, local_files_only=True)
                except OSError:
                    if os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false", "False"}:
                        raise
                    return cls.from_pretrained(model)
        except (OSError, ValueError):
            raise ModelNotAvailableError(offline_message(model, preset, option, kind)) from None
    return None


def named_pretrained(cls, model: str, kind: str, example: str):
    """`from_folder_or_hub` for a network the user named; a name that is neither is one sentence."""
    loaded = from_folder_or_hub(cls, model)
    if loaded is None:
        raise ConfigError(f"Unknown {kind} {model!r}: use a hub id (e.g. {example!r}), a local folder, or 'random'.")
    return loaded


def load_tiny_vae(vae: str) -> AutoencoderTiny:
    if vae in TINY_VAE_PRESETS:
        return build_tiny_vae(vae)
    loaded = from_folder_or_hub(AutoencoderTiny, vae, preset="tiny-taesd", option="vae", kind="Tiny VAE")
    if loaded is None:
        raise ConfigError(f"Unknown tiny VAE {vae!r}: use a hub id (e.g. 'madebyollin/taesd'), a local folder, "
                          f"or a preset ({', '.join(sorted(TINY_VAE_PRESETS))}).")
    return loaded


def _parse_lora(spec: str) -> tuple[str, float]:
    """`name:scale` with a numeric scale, or just `name` (scale 1)."""
    name, _, scale = spec.rpartition(":")
    try:
        return (name, float(scale)) if name else (spec, 1.0)
    except ValueError:
        return spec, 1.0


def _fuse_loras(components: dict, loras: tuple[str, ...]) -> None:
    if not loras:
        return
    pipe = components.get("pipe")
    if pipe is None:
        raise ConfigError(f"LoRAs {list(loras)} cannot be fused into a random-weight preset; use a real model.")
    names = []
    for i, spec in enumerate(loras):
        source, scale = _parse_lora(spec)
        adapter = f"lora{i}"
        try:
            pipe.load_lora_weights(source, adapter_name=adapter)
        except (OSError, ValueError) as exc:
            raise ModelNotAvailableError(f"LoRA {source!r} could not be loaded ({exc}).") from exc
        names.append((adapter, scale))
    pipe.set_adapters([n for n, _ in names], adapter_weights=[s for _, s in names])
    pipe.fuse_lora(adapter_names=[n for n, _ in names], lora_scale=1.0)
    pipe.unload_lora_weights()


def load_models(model: str = "stabilityai/sd-turbo", vae: str | None = None, loras: tuple[str, ...] = (),
                device: str = "cuda", dtype: str = "float16",
                controlnets: tuple[tuple[str, tuple[str, str] | None], ...] = (),
                ip_adapter: tuple[str, str] | None = None) -> ModelBundle:
    """Load every network one pipeline needs.

    Args:
        model: hub id, local diffusers folder, `.safetensors` file, or a preset name.
        vae: optional tiny VAE (TAESD) as hub id, local folder or preset; None keeps the model's VAE.
        controlnets: (ControlNet, (preprocessor, its network) or None) per ControlNet: hub ids,
            folders or `random` (see `pipelines.control`).
        ip_adapter: (IP-Adapter weights, image encoder) (see `pipelines.ip_adapter`), or None.
        loras: LoRA hub ids / files, optionally `name:scale`, fused into the UNet at load time.
        device, dtype: where and in which precision the networks run; each weight is cast before it
            moves (`placement.place_network`), so the device never holds the float32 load.
    """
    from livediff.pipelines.control_models import load_controlnet, load_preprocessor_model
    from livediff.pipelines.ip_adapter import load_ip_adapter

    torch_dtype = resolve_dtype(dtype, device)
    components = build_preset(model) if is_preset(model) else _load_components(model)
    _fuse_loras(components, tuple(loras))
    if vae is not None:
        check_tiny_vae_family(vae, family_of(components["unet"]))
        components["vae"] = load_tiny_vae(vae)
    bundle = ModelBundle(name=model, unet=components["unet"], vae=components["vae"],
                         text_encoder=components["text_encoder"], tokenizer=components["tokenizer"],
                         scheduler=components["scheduler"], loras=tuple(loras),
                         text_encoder_2=components.get("text_encoder_2"), tokenizer_2=components.get("tokenizer_2"),
                         zero_empty_negative=components.get("zero_empty_negative", False),
                         controlnets=tuple(load_controlnet(name, components["unet"], seed=i)
                                           for i, (name, _) in enumerate(controlnets)),
                         control_preprocessors=tuple(load_preprocessor_model(*network, seed=i) if network else None
                                                     for i, (_, network) in enumerate(controlnets)),
                         ip_adapter=load_ip_adapter(*ip_adapter, components["unet"]) if ip_adapter else None)
    for net in (bundle.unet, bundle.vae, bundle.text_encoder, bundle.text_encoder_2, *bundle.controlnets,
                *bundle.control_preprocessors, bundle.ip_adapter):
        if net is not None:
            wanted = torch.float32 if net is bundle.vae and vae_needs_float32(bundle, torch_dtype) else torch_dtype
            place_network(net, device, wanted)
    return bundle


def vae_needs_float32(bundle: ModelBundle, dtype: torch.dtype) -> bool:
    """SDXL's own VAE overflows in float16 (its config says `force_upcast`, as diffusers' SDXL
    pipelines honour): it runs in float32 under a float16 stream. TAESDXL and fp16-fixed VAEs don't."""
    return (dtype == torch.float16 and bundle.family == "sdxl" and isinstance(bundle.vae, AutoencoderKL)
            and bool(bundle.vae.config.get("force_upcast", False)))


def check_tiny_vae_family(vae: str, family: str) -> None:
    """TAESD and TAESDXL have the same layout but not the same latent space: a mix-up gives wrong
    colours without any error, so the names are checked (presets are random weights: any goes)."""
    if vae in TINY_VAE_PRESETS:
        return
    name = vae.rstrip("/").lower()
    if family == "sdxl" and name.endswith("taesd"):
        raise ConfigError(f"tiny VAE {vae!r} is for SD 1.x/2.x latents; an SDXL model needs 'madebyollin/taesdxl'.")
    if family == "sd" and name.endswith("taesdxl"):
        raise ConfigError(f"tiny VAE {vae!r} is for SDXL latents; an SD 1.x/2.x model needs 'madebyollin/taesd'.")
