"""Pipeline options shared by every command that builds a pipeline, mirroring `load_pipeline`."""
from __future__ import annotations

import argparse

from livediff.accelerators import registry as backends
from livediff.app.pictures import RAISE_WITH_OPTION, add_max_pixels_option, read_picture
from livediff.app.threads import add_threads_option
from livediff.pipelines import control_registry as preprocessors
from livediff.pipelines.choices import CFG_TYPES

DEFAULT_MODEL = "stabilityai/sd-turbo"


#: the guidance options' defaults (mode causal-video refuses any other value: it runs without guidance)
GUIDANCE_DEFAULTS = {"cfg_type": "self", "guidance_scale": 1.2, "delta": 1.0}

def one_of(words, last: str = "or") -> str:
    """'a, b, c or d': how the help texts list names."""
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


DEFAULT_ACCELERATOR = "eager"
#: the guidance options' defaults (mode causal-video refuses any other value: it runs without guidance)
GUIDANCE_DEFAULTS = {"cfg_type": "self", "guidance_scale": 1.2, "delta": 1.0}
#: how the help texts say where a preprocessor's control image is made (`PreprocessorSpec.runs_on`)
WHERE = {"device": "on the device", "host": "on the host", "pixels": "on the host", "caller": "by the caller"}


def _accelerator_help() -> str:
    """Every registered backend (`accelerators.registry`), with its summary."""
    return "how the networks run: " + one_of(
        f"{spec.name} ({'default: ' if spec.name == DEFAULT_ACCELERATOR else ''}{spec.summary})"
        for spec in backends.specs())


def _preprocessor_help() -> str:
    """Every registered ControlNet preprocessor (`pipelines.control_registry`), with its summary and
    where it runs."""
    default = preprocessors.DEFAULT
    return "per --controlnet, in order: " + one_of(
        f"{spec.name} ({'default: ' if spec.name == default else ''}{spec.summary}, {WHERE[spec.runs_on]})"
        for spec in preprocessors.specs())


def _network_preprocessors(last: str = "or") -> str:
    return one_of(preprocessors.names(with_network=True), last)


def add_pipeline_options(parser: argparse.ArgumentParser, default_t_index: str = "32,45") -> None:
    group = parser.add_argument_group("model and pipeline")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help="hub id, local diffusers folder, .safetensors file (SD 1.x/2.x or SDXL, detected), or "
                            "preset (tiny, sd-turbo-random, sd15-random, sd-turbo-reduced, tiny-sdxl, "
                            "sdxl-turbo-random, sdxl-turbo-reduced); default %(default)s")
    group.add_argument("--vae", default=None, help="tiny VAE (e.g. madebyollin/taesd) instead of the model's VAE")
    group.add_argument("--lora", action="append", default=[], metavar="ID[:SCALE]",
                       help="LoRA fused at load time (repeatable), e.g. latent-consistency/lcm-lora-sdv1-5")
    group.add_argument("--controlnet", action="append", default=[], metavar="ID",
                       help="ControlNet (hub id, folder, or 'random'; repeatable), e.g. lllyasviel/sd-controlnet-canny")
    group.add_argument("--control-preprocessor", action="append", default=[], metavar="NAME",
                       help=_preprocessor_help())
    group.add_argument("--preprocessor-model", action="append", default=[], metavar="ID",
                       help=f"per {_network_preprocessors()} preprocessor, in order: its network (hub id, folder or "
                            f"'random'), e.g. "
                            f"{', '.join(s.network_example for s in preprocessors.specs() if s.network_example)}")
    group.add_argument("--control-scale", action="append", type=float, default=[], metavar="S",
                       help="per --controlnet, in order: residual scale in [0, 2] (default 1)")
    group.add_argument("--ip-adapter", default=None, metavar="FILE",
                       help="IP-Adapter weights: a local .safetensors/.bin file, a hub file as owner/repo/path "
                            "(e.g. h94/IP-Adapter/models/ip-adapter_sd15.safetensors), or 'random'")
    group.add_argument("--image-encoder", default=None, metavar="ID",
                       help="the IP-Adapter's CLIP image encoder (hub id, folder or 'random'), e.g. "
                            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K")
    group.add_argument("--style-image", default=None, metavar="PATH",
                       help="with --ip-adapter: the picture the output should look like")
    add_max_pixels_option(group)
    group.add_argument("--style-scale", type=float, default=0.6, help="IP-Adapter scale in [0, 2] (default %(default)s)")
    group.add_argument("--prompt", default="", help="what the output should look like")
    group.add_argument("--negative-prompt", default="", help="what to steer away from (used by cfg full/initialize/self)")
    group.add_argument("--t-index-list", default=default_t_index, metavar="I,J,...",
                       help="stage indices into the 50-step LCM table, 0..49 (default %(default)s)")
    group.add_argument("--strength", type=float, default=None,
                       help="edit strength in (0,1]; overrides --t-index-list keeping its number of steps")
    group.add_argument("--cfg-type", choices=CFG_TYPES, default=GUIDANCE_DEFAULTS["cfg_type"],
                       help="guidance mode (default %(default)s)")
    group.add_argument("--guidance-scale", type=float, default=GUIDANCE_DEFAULTS["guidance_scale"],
                       help="default %(default)s; <=1 disables guidance")
    group.add_argument("--delta", type=float, default=GUIDANCE_DEFAULTS["delta"],
                       help="residual CFG virtual-negative weight (default %(default)s)")
    group.add_argument("--width", type=int, default=512, help="model width in pixels, a multiple of 8 (16 in causal video)")
    group.add_argument("--height", type=int, default=512, help="model height in pixels, a multiple of 8 (16 in causal video)")
    group.add_argument("--frame-buffer-size", type=int, default=1, help="frames per denoiser call")
    group.add_argument("--seed", type=int, default=2, help="seed of the stream's fixed noise (default %(default)s)")
    group.add_argument("--device", default="auto",
                       help="auto (default: cuda when available, else cpu), cuda, cuda:N, cpu or mps")
    group.add_argument("--dtype", default="auto", choices=("auto", "float16", "bfloat16", "float32"),
                       help="auto (default): float16 on CUDA, float32 on CPU")
    group.add_argument("--accelerator", default=DEFAULT_ACCELERATOR, help=_accelerator_help())
    group.add_argument("--openvino-device", default=None,
                       help="accelerator openvino: CPU (default), GPU, NPU or AUTO (Intel GPUs and NPUs)")
    add_threads_option(group)


def parse_t_index_list(text: str) -> list[int]:
    from livediff.errors import ConfigError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"--t-index-list {text!r} must be comma-separated integers in 0..49") from exc


def controlnet_settings(args: argparse.Namespace) -> list[dict]:
    """--controlnet / --control-preprocessor / --control-scale, matched by position; the n-th
    --preprocessor-model goes to the n-th preprocessor that runs a network (depth, pose, ...)."""
    from livediff.errors import ConfigError

    models = args.controlnet
    for option, values in (("--control-preprocessor", args.control_preprocessor), ("--control-scale",
                                                                                  args.control_scale)):
        if len(values) > len(models):
            raise ConfigError(f"{option} given {len(values)} time(s) for {len(models)} --controlnet")
    networks = iter(args.preprocessor_model)
    specs = [_controlnet_spec(args, i, model, networks) for i, model in enumerate(models)]
    wanted = sum("preprocessor_model" in spec for spec in specs)
    if len(args.preprocessor_model) > wanted:
        raise ConfigError(f"--preprocessor-model given {len(args.preprocessor_model)} time(s) for {wanted} "
                          f"{_network_preprocessors()} --control-preprocessor")
    return specs


def _controlnet_spec(args: argparse.Namespace, i: int, model: str, networks) -> dict:
    from livediff.errors import ConfigError

    spec = {"model": model}
    if i < len(args.control_preprocessor):
        spec["preprocessor"] = name = args.control_preprocessor[i]
        preprocessor = preprocessors.find(name)  # an unknown name is refused with the others' names when built
        if preprocessor is not None and preprocessor.network is not None:
            spec["preprocessor_model"] = next(networks, None)
            if spec["preprocessor_model"] is None:
                raise ConfigError(f"--control-preprocessor {name} needs its network: add a --preprocessor-model "
                                  f"({preprocessor.wanted})")
    if i < len(args.control_scale):
        spec["scale"] = args.control_scale[i]
    return spec


def ip_adapter_settings(args: argparse.Namespace) -> dict | None:
    """--ip-adapter / --image-encoder / --style-scale as `load_pipeline`'s ip_adapter (None without one)."""
    from livediff.errors import ConfigError

    if args.ip_adapter is None:
        if args.style_image is not None or args.image_encoder is not None:
            raise ConfigError("--style-image and --image-encoder need --ip-adapter (the adapter's weights)")
        return None
    if args.image_encoder is None:
        raise ConfigError("--ip-adapter needs --image-encoder (its CLIP image encoder: hub id, folder or 'random')")
    return dict(model=args.ip_adapter, image_encoder=args.image_encoder, scale=args.style_scale)


def style_image(args: argparse.Namespace):
    """The --style-image picture (read and checked before any model loads), or None."""
    if args.style_image is None:
        return None
    return read_picture(args.style_image, args.max_pixels, how_to_raise=RAISE_WITH_OPTION)


def pipeline_settings(args: argparse.Namespace, mode: str) -> dict:
    """The `load_pipeline` keywords these options describe, with device and dtype resolved (and checked)."""
    from livediff.pipelines.config import resolve_device, resolve_dtype_name

    device = resolve_device(args.device)
    return dict(model=args.model, mode=mode, t_index_list=parse_t_index_list(args.t_index_list),
                cfg_type=args.cfg_type, width=args.width, height=args.height,
                frame_buffer_size=args.frame_buffer_size, vae=args.vae, loras=tuple(args.lora), device=device,
                dtype=resolve_dtype_name(args.dtype, device), seed=args.seed, accelerator=args.accelerator,
                controlnet=controlnet_settings(args), ip_adapter=ip_adapter_settings(args),
                **({"accelerator_options": {"openvino_device": args.openvino_device}} if args.openvino_device else {}))


def build_pipeline(args: argparse.Namespace, mode: str, **extra):
    """The pipeline these options describe, prepared with the prompt. Mode "causal-video" takes the
    causal options (`add_causal_options`) and is prepared without guidance (its models are distilled to
    run without it: --guidance-scale, --delta and --cfg-type are not used)."""
    from livediff.app.build_progress import BuildReporter
    from livediff.pipelines import load_pipeline

    settings, style = pipeline_settings(args, mode), style_image(args)
    settings.update(causal_settings(args, mode, "--stream-mode"))
    pipe = load_pipeline(**settings, progress=BuildReporter(), **extra)
    if args.strength is not None:
        pipe.set_strength(args.strength)
    if mode == "causal-video":
        pipe.prepare(prompt=args.prompt, negative_prompt=args.negative_prompt)
    else:
        pipe.prepare(prompt=args.prompt, negative_prompt=args.negative_prompt, guidance_scale=args.guidance_scale,
                     delta=args.delta)
    if style is not None:
        pipe.set_style_image(style)
    return pipe


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """Feature bank and token sparsity options of mode "video" (defaults: the method's)."""
    group = parser.add_argument_group("feature bank (mode video)")
    group.add_argument("--no-bank", action="store_true", help="turn the feature bank off")
    group.add_argument("--bank-interval", type=int, default=None, help="write the bank every N frames (default 4)")
    group.add_argument("--bank-frames", type=int, default=None, help="frames of memory per stage (default 1)")
    group.add_argument("--bank-fifo", action="store_true",
                       help="keep the last frames as a FIFO instead of the fixed-size merged memory")
    group.add_argument("--fusion-threshold", type=float, default=None, help="cosine above which tokens fuse (0.98)")
    group.add_argument("--fusion-strength", type=float, default=None, help="weight of the banked token (0.8)")
    group.add_argument("--sparse-keep-ratio", type=float, default=None,
                       help="fraction of static banked tokens kept (1 = dense bank)")
    group.add_argument("--scene-cut-threshold", type=float, default=None,
                       help="input change that empties the bank (default 0.5)")
    group.add_argument("--token-merge-ratio", type=float, default=0.0,
                       help="fraction of self-attention tokens merged (0 = exact)")


def video_settings(args: argparse.Namespace) -> dict:
    """`load_pipeline` keywords for the bank and token merging; only the options the user set."""
    if args.no_bank:
        bank = False
    else:
        chosen = dict(cache_interval=args.bank_interval, max_frames=args.bank_frames,
                      fusion_threshold=args.fusion_threshold, fusion_strength=args.fusion_strength,
                      sparse_keep_ratio=args.sparse_keep_ratio, scene_cut_threshold=args.scene_cut_threshold)
        bank = {key: value for key, value in chosen.items() if value is not None}
        if args.bank_fifo:
            bank["merge"] = False
    return dict(bank=bank, token_merge_ratio=args.token_merge_ratio)


CAUSAL_OPTIONS = ("chunk_frames", "sink_chunks", "window_chunks", "sampler")


def add_causal_options(parser: argparse.ArgumentParser) -> None:
    """The causal video options (mode causal-video), shared by `livediff video`, `webcam` and `ui`."""
    causal = parser.add_argument_group("causal video (mode causal-video)")
    causal.add_argument("--chunk-frames", type=int, default=None,
                        help="latent frames per chunk, k (default 1): a chunk is 4k video frames of latency")
    causal.add_argument("--sink-chunks", type=int, default=None, help="first chunks kept in the cache (default 1)")
    causal.add_argument("--window-chunks", type=int, default=None, help="recent chunks kept in the cache (default 4)")
    causal.add_argument("--sampler", default=None,
                        help="between stages: renoise (default; predict x0, re-noise with fresh seeded noise, as the "
                             "distilled causal models were trained) or euler (the deterministic flow-matching step)")


def causal_settings(args: argparse.Namespace, mode: str, mode_option: str = "--mode") -> dict:
    """`load_pipeline`'s `causal=` for mode causal-video (only the options the user set); empty for
    other modes, where giving one of them is refused with a sentence."""
    from livediff.errors import ConfigError

    chosen = {name: getattr(args, name) for name in CAUSAL_OPTIONS if getattr(args, name, None) is not None}
    if mode == "causal-video":
        guidance = {name: getattr(args, name) for name, default in GUIDANCE_DEFAULTS.items()
                    if getattr(args, name, default) != default}
        if getattr(args, "negative_prompt", ""):
            guidance["negative_prompt"] = args.negative_prompt
        for name, value in guidance.items():
            raise ConfigError(f"--{name.replace('_', '-')} {value!r}: {mode_option} causal-video runs distilled causal "
                              f"models without classifier-free guidance; leave it out")
        return {"causal": chosen}
    if chosen:
        raise ConfigError(f"--{next(iter(chosen)).replace('_', '-')} is a {mode_option} causal-video option")
    return {}
