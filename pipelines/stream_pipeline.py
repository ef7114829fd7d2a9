"""The streaming img2img / txt2img pipeline: the stream core plus optional parts.

Frame path: check and stack the frame on the host (the caller's thread) → upload and convert on the
device → similarity filter (maybe reuse the last output) → VAE encode → stream
batch (one UNet call for all in-flight frames) → VAE decode of the finished frames → convert back.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from typing_extensions import Self  # typing.Self needs Python 3.11

import torch

from livediff.errors import ConfigError
from livediff.network_inputs import NetworkInputs
from livediff.pipelines import checks
from livediff.pipelines.batching import DECODE, ENCODE, FramePath, NetworkCall, run_alone
from livediff.pipelines.config import StreamConfig, StreamSettings
from livediff.pipelines.control import ControlImages, HostControl
from livediff.pipelines.generators import device_generator
from livediff.pipelines.ip_adapter import clip_pixels
from livediff.pipelines.frames import FrameKind, HostFrames, from_model_tensor, host_frames
from livediff.pipelines.models import ModelBundle, resolve_dtype
from livediff.pipelines.nonfinite import NonFiniteCount
from livediff.pipelines.prompts import Conditioning, PromptEncoder
from livediff.pipelines.runners import StreamRunners
from livediff.pipelines.schedule import StageSchedule, strength_to_t_index_list
from livediff.pipelines.similarity import SimilarityFilter, SimilarityFilterConfig
from livediff.pipelines.stream_state import (STATE_VERSION, check_state, generator_state, output_from_state,
                                             output_state, set_generator_state)
from livediff.pipelines.stream import Guidance, StreamBatch, stream_rows, unet_calls


#: modes run by this class on the same networks: their sessions can switch between them
SHARED_STREAM_MODES = frozenset({"img2img", "txt2img"})


class StreamPipeline:
    """One stream's state (buffers, noise, prompt) over shared, read-only networks.

    `config` is the configuration as built; `settings` are the ones the stream runs with now (live
    setters change them, never the config). `new_session()` gives another independent stream over
    the same networks, which is how the UI serves several browser tabs with one model in memory.
    """

    def __init__(self, config: StreamConfig, models: ModelBundle, runners: StreamRunners):
        self.config = config
        self.settings = StreamSettings.from_config(config)
        self.models = models
        self.runners = runners
        self.device = torch.device(config.device)
        self.dtype = resolve_dtype(config.dtype, config.device)
        scale = models.vae_scale_factor
        self.latent_shape = (models.latent_channels, config.height // scale, config.width // scale)
        self.prompt_encoder = PromptEncoder(models, config.height, config.width, self.dtype)
        self.guidance: Guidance | None = None
        self.similarity_filter = (SimilarityFilter(config.similarity_filter, config.seed)
                                  if config.similarity_filter else None)
        self.control = ControlImages(config.controlnet, models.control_preprocessors) if config.controlnet else None
        #: the control images (one (F,3,H,W) tensor in [0,1] per ControlNet) of the latest frame, for previews
        self.last_control: tuple[torch.Tensor, ...] = ()
        self.control_scales = (torch.tensor([[spec.scale for spec in config.controlnet]], device=self.device,
                                            dtype=self.dtype) if config.controlnet else None)
        self._last_output = None
        self._last_kind: FrameKind | None = None
        #: IP-Adapter: the scale, the style image's (unconditional, conditional) tokens, their K/V
        self.ip_scale = config.ip_adapter.scale if config.ip_adapter else 0.0
        self._style_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
        self._style_kv = self._style_keys_values()
        #: non-finite values the stream zeroed since the pipeline was built (`pipelines.nonfinite`)
        self.nonfinite = NonFiniteCount(self.device)
        self._build_stream()

    # --- set-up -----------------------------------------------------------------------------
    def _build_stream(self) -> None:
        seed = self.settings.seed
        self.schedule = StageSchedule.build(self.models.scheduler, self.settings.t_index_list,
                                            self.config.frame_buffer_size, self.device, self.dtype)
        self._txt2img_noise = device_generator(self.device, seed + 1)
        self.stream = StreamBatch(self.schedule, self.latent_shape, torch.Generator("cpu").manual_seed(seed),
                                  self.device, self.dtype, self.nonfinite)
        self._last_output = None
        self._last_kind = None

    def _embed(self, text: str, negative: bool = False) -> Conditioning:
        return replace(self.prompt_encoder(text, negative), image=self._style_kv[0 if negative else 1])

    def _style_keys_values(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(unconditional, conditional) image K/V of every IP-Adapter layer by input name; before any
        style image, zero values: the image term is exactly 0 and the stream runs as without the adapter."""
        adapter = self.models.ip_adapter
        if adapter is None:
            return {}, {}
        names = adapter.layout.input_names()
        if self._style_tokens is None:
            layout = adapter.layout
            zeros = dict(zip(names, (torch.zeros(1, layout.tokens, width, device=self.device, dtype=self.dtype)
                                     for width in layout.widths for _ in range(2)), strict=True))
            return zeros, zeros
        uncond, cond = self._style_tokens
        return (dict(zip(names, adapter.keys_values(uncond, self.ip_scale, self.dtype), strict=True)),
                dict(zip(names, adapter.keys_values(cond, self.ip_scale, self.dtype), strict=True)))

    def _restyle(self) -> None:
        self._style_kv = self._style_keys_values()
        if self.guidance is not None:
            self.guidance.uncond = replace(self.guidance.uncond, image=self._style_kv[0])
            self.guidance.cond = replace(self.guidance.cond, image=self._style_kv[1])

    def set_style_image(self, image) -> None:
        """Live, IP-Adapter: frames from the next call on look like `image` (PIL, array or tensor in
        [0,1]); it is encoded here, once, with its K/V in every cross-attention layer."""
        adapter = self._require_adapter()
        self._style_tokens = adapter.embeddings(clip_pixels(image, adapter.image_size))
        self._restyle()

    def set_ip_adapter_scale(self, scale: float) -> None:
        """Live, IP-Adapter: how strongly the style image conditions the frames (0 switches it off);
        folded into the image values, so nothing is rebuilt."""
        self._require_adapter()
        self.ip_scale = checks.number("ip_adapter scale", scale, 0.0, 2.0)
        self._restyle()

    def _require_adapter(self):
        if self.models.ip_adapter is None:
            raise ConfigError("this pipeline has no IP-Adapter; build it with ip_adapter=dict(model=..., "
                              "image_encoder=...)")
        return self.models.ip_adapter

    def prepare(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.2,
                delta: float = 1.0) -> None:
        """Set the prompt and guidance; text embeddings are computed here, once, not per frame."""
        checks.text("prompt", prompt)
        checks.text("negative_prompt", negative_prompt)
        self._check_guidance(guidance_scale, delta)
        self.guidance = Guidance(cond=self._embed(prompt), uncond=self._embed(negative_prompt, negative=True),
                                 cfg_type=self.settings.cfg_type, guidance_scale=guidance_scale, delta=delta)
        self.prompt, self.negative_prompt = prompt, negative_prompt

    def update_prompt(self, prompt: str, negative_prompt: str | None = None) -> None:
        """Change the prompt live: no rebuild, buffers kept, the CFG row layout follows automatically."""
        guidance = self._require_guidance()
        checks.text("prompt", prompt)
        if negative_prompt is not None:
            checks.text("negative_prompt", negative_prompt)
        guidance.cond = self._embed(prompt)
        self.prompt = prompt
        if negative_prompt is not None:
            guidance.uncond = self._embed(negative_prompt, negative=True)
            self.negative_prompt = negative_prompt

    def set_guidance(self, guidance_scale: float | None = None, delta: float | None = None,
                     cfg_type: str | None = None) -> None:
        guidance = self._require_guidance()
        self._check_guidance(guidance_scale if guidance_scale is not None else guidance.guidance_scale,
                             delta if delta is not None else guidance.delta)
        if cfg_type is not None:
            self.settings = replace(self.settings, cfg_type=cfg_type)
            guidance.cfg_type = cfg_type
        if guidance_scale is not None:
            guidance.guidance_scale = guidance_scale
        if delta is not None:
            guidance.delta = delta

    def set_strength(self, strength: float) -> None:
        """Map a strength in (0,1] to a t_index_list with the current number of steps."""
        self.set_t_index_list(strength_to_t_index_list(strength, len(self.settings.t_index_list)))

    def set_t_index_list(self, t_index_list) -> None:
        """New stages invalidate the in-flight latents (they sit at the old noise levels): the stream restarts."""
        self.settings = replace(self.settings, t_index_list=t_index_list)
        self._build_stream()

    def set_similarity_filter(self, threshold: float | None, max_skip: int = 10) -> None:
        """Turn the filter on with these settings, or off with threshold=None."""
        if threshold is None:
            self.settings = replace(self.settings, similarity_filter=None)
            self.similarity_filter = None
            return
        config = SimilarityFilterConfig(threshold=threshold, max_skip=max_skip)
        self.settings = replace(self.settings, similarity_filter=config)
        self.similarity_filter = SimilarityFilter(config, self.settings.seed)

    def set_controlnet_scale(self, index: int, scale: float) -> None:
        """Live: ControlNet `index`'s residuals are scaled by `scale` from the next call on (0 switches
        it off); a graph input on every backend, so nothing is rebuilt."""
        count = len(self.config.controlnet)
        if not count:
            raise ConfigError("this pipeline has no ControlNet; build it with controlnet=[...]")
        checks.whole("controlnet index", index, 0, count - 1)
        value = checks.number("controlnet scale", scale, 0.0, 2.0)
        scales = self.control_scales.clone()
        scales[0, index] = value
        self.control_scales = scales

    def reset(self) -> None:
        """Back to the state of a freshly built pipeline with the same settings and prompt."""
        self._build_stream()
        if self.similarity_filter is not None:
            self.similarity_filter.reset()

    def new_session(self, **overrides) -> Self:
        """An independent stream (own buffers, noise, prompt) sharing these networks.

        `overrides` are `StreamConfig` fields (e.g. bank, token_merge_ratio), validated again; the
        mode and the networks' fields stay (the pipeline's class and networks are built for them); the
        new session starts from the config as built (not this stream's live settings) and has no
        prompt until `prepare`.
        """
        unknown = sorted(set(overrides) - set(self.config.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))} for new_session")
        fixed = sorted(set(overrides) & {"model", "vae", "loras", "controlnet", "ip_adapter", "device", "dtype",
                                         "accelerator"})
        if fixed:
            raise ConfigError(f"{', '.join(fixed)} belong to the shared networks; new_session cannot change them "
                              f"(build another pipeline)")
        mode = overrides.get("mode", self.config.mode)
        if mode != self.config.mode and not {mode, self.config.mode} <= SHARED_STREAM_MODES:
            raise ConfigError(f"new_session mode {mode!r}: a session keeps its pipeline's kind of stream "
                              f"({self.config.mode!r}; img2img and txt2img sessions share one), build a {mode!r} "
                              f"pipeline with load_pipeline")
        return type(self)(replace(self.config, **overrides), self.models, self.runners)

    def set_seed(self, seed: int) -> None:
        """The session noise is drawn from the seed when the stream is built, so a new seed restarts it."""
        self.settings = replace(self.settings, seed=seed)
        self.reset()

    def stream_state(self) -> dict[str, Any]:
        """Everything the next frames depend on besides the settings and the prompt, as plain data
        (tensors and Python values; `torch.save` it): in-flight latents and residual stock, the noise
        generators' positions, the similarity filter and the last output. A pipeline built with the
        same settings and prompt that loads it (`load_stream_state`) makes the frames this one would
        have made, bit for bit on the same device (see `pipelines.stream_state`)."""
        return {"version": STATE_VERSION, "key": self._state_key(), "stream": self.stream.state(),
                "txt2img_noise": generator_state(self._txt2img_noise),
                "similarity": self.similarity_filter.state() if self.similarity_filter is not None else None,
                "last_output": output_state(self._last_output, self._last_kind)}

    def load_stream_state(self, state: Mapping[str, Any]) -> None:
        """Continue the stream `state` was taken from (`stream_state`); refused, naming the
        difference, when it was saved under other settings."""
        check_state(state, self._state_key())
        self.stream.load_state(state["stream"])
        set_generator_state(self._txt2img_noise, state["txt2img_noise"])
        if self.similarity_filter is not None:
            self.similarity_filter.load_state(state["similarity"])
        self._last_output, self._last_kind = output_from_state(state["last_output"], self.device)

    def _state_key(self) -> dict[str, Any]:
        """The settings a stream state only fits under (as plain values, compared on load)."""
        settings = self.settings
        return {"pipeline": type(self).__name__, "mode": self.config.mode, "size": [self.config.width, self.config.height],
                "frame_buffer_size": self.config.frame_buffer_size, "seed": settings.seed,
                "t_index_list": [int(t) for t in settings.t_index_list], "cfg_type": settings.cfg_type,
                "similarity_filter": repr(settings.similarity_filter)}

    @staticmethod
    def _check_guidance(guidance_scale: float, delta: float) -> None:
        checks.number("guidance_scale", guidance_scale, 0.0, 20.0)
        checks.number("delta", delta, 0.0, 2.0)

    def _require_guidance(self) -> Guidance:
        if self.guidance is None:
            raise ConfigError("no prompt yet: call prepare(prompt=...) before running frames")
        return self.guidance

    # --- running ----------------------------------------------------------------------------
    def __call__(self, frame=None, *, output: str = "same", control=None):
        """One frame (F frames with frame_buffer_size F) in, the restyled one out, in the kind it came
        in (PIL image, array or tensor; txt2img: PIL). `output="tensor"` gives a float tensor in
        [0, 1] on the pipeline's device instead, with no conversion on the host. `control`: the
        control image(s) of the frame for ControlNets with preprocessor `none`, like a frame."""
        return run_alone(self.frame_calls(frame, output=output, control=control))

    def frame_calls(self, frame=None, *, output: str = "same", control=None) -> FramePath:
        """`__call__` as a frame path: yields its network calls, returns the picture. Sessions over the
        same networks run their frames together with `pipelines.batching.run_together`.

        The frame's host part is done here, by the calling thread: checking it, stacking its pixels
        as they came (uint8 for images and arrays) and the `pixels` ControlNet preprocessors (canny).
        It reads only the pipeline's config, so the UI does it without the networks' lock
        (`app/ui/batcher.py`); the returned path does the device part (upload, convert) when it runs."""
        if output not in ("same", "tensor"):
            raise ConfigError(f"output {output!r} is not one of same, tensor")
        if self.config.mode == "txt2img":
            if frame is not None:
                raise ConfigError("mode 'txt2img' takes no input frame; build the pipeline with mode='img2img'")
            return self._txt2img(output)
        if frame is None:
            raise ConfigError(f"mode {self.config.mode!r} needs an input frame")
        frames = host_frames(frame, self.config.height, self.config.width, self.config.frame_buffer_size)
        return self._frame_path(frames, self._host_control(frames, control), output)

    def _frame_path(self, frames: HostFrames, control: HostControl | None, output: str) -> FramePath:
        guidance = self._require_guidance()
        kind = FrameKind("torch", batched=frames.kind.batched) if output == "tensor" else frames.kind
        images = frames.to_model(self.device, self.dtype)
        if self.similarity_filter is not None and self.similarity_filter.should_skip(images) \
                and self._last_output is not None:
            return self._last_output
        carried = self._control_images(images, control)
        self.last_control = tuple(carried.values())
        latents = yield from self.encode(images)
        finished = yield from self.denoise(latents, guidance, carried=carried)
        self._last_output = from_model_tensor((yield self._decode_call(finished))["images"], kind)
        self._last_kind = kind
        return self._last_output

    def encode(self, images: torch.Tensor) -> FramePath:
        """Input images in [-1,1] → latents; the hook for parts that look at the input frames (scene cuts)."""
        encode = self.runners.encode
        outputs = yield NetworkCall(ENCODE, ("vae_encoder", id(encode)), encode, NetworkInputs({"images": images}),
                                    row_unit=self.row_unit(stream=False))
        return outputs["latents"]

    def _host_control(self, frames: HostFrames, control) -> HostControl | None:
        """The host part of the frames' control images (`ControlImages.on_host`); None without ControlNets."""
        if self.control is None:
            if control is not None:
                raise ConfigError("a control image was given but this pipeline has no ControlNet")
            return None
        given = None if control is None else host_frames(control, self.config.height, self.config.width,
                                                         self.config.frame_buffer_size)
        return self.control.on_host(frames, given)

    def _control_images(self, images: torch.Tensor, control: HostControl | None) -> dict[str, torch.Tensor]:
        """The frames' control images by UNet input name (`control_0`, … one per ControlNet)."""
        if self.control is None or control is None:
            return {}
        return {f"control_{i}": image for i, image in enumerate(self.control(images, control))}

    def call_constants(self) -> dict[str, torch.Tensor]:
        """(1, ...) inputs by name every UNet row takes besides its own: the ControlNet scales."""
        return {"control_scales": self.control_scales} if self.control_scales is not None else {}

    def denoise(self, latents: torch.Tensor, guidance: Guidance, noised: bool = False,
                carried: Mapping[str, torch.Tensor] | None = None) -> FramePath:
        """Latents in, finished latents out; the hook later parts (feature bank) wrap. `carried`:
        the frames' control images (see `StreamBatch.calls`)."""
        calls = unet_calls(self.runners.unet, self.row_unit(stream=True), self.call_constants())
        return (yield from self.stream.calls(latents, calls, guidance, noised=noised, carried=carried))

    def row_unit(self, stream: bool) -> int:
        """`NetworkCall.row_unit` of this stream's calls: 0 where the backend takes any row count, else
        the most rows one call of this stream has (UNet: `stream_rows`; VAE: the frames of a call)."""
        if not self.runners.backend.static_rows:
            return 0
        frames = self.config.frame_buffer_size
        return stream_rows(len(self.settings.t_index_list), frames, self.settings.cfg_type).max if stream else frames

    def _decode_call(self, latents: torch.Tensor) -> NetworkCall:
        decode = self.runners.decode
        return NetworkCall(DECODE, ("vae_decoder", id(decode)), decode, NetworkInputs({"latents": latents}),
                           row_unit=self.row_unit(stream=False))

    def _txt2img(self, output: str) -> FramePath:
        guidance = self._require_guidance()
        noise = torch.randn((self.config.frame_buffer_size, *self.latent_shape), generator=self._txt2img_noise,
                            device=self.device)  # drawn where it is used: no per-frame host copy
        finished = yield from self.denoise(noise.to(self.dtype), guidance, noised=True)
        kind = FrameKind("torch" if output == "tensor" else "pil", batched=self.config.frame_buffer_size > 1)
        return from_model_tensor((yield self._decode_call(finished))["images"], kind)
