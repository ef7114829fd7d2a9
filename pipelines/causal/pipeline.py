"""`CausalVideoPipeline`: streaming video-to-video through a causal Wan transformer (the
StreamDiffusionV2 recipe, written from its description).

    pipe = load_pipeline(model="tiny-wan-causal", mode="causal-video", width=64, height=64, device="cpu",
                         t_index_list=[32, 45], causal=dict(chunk_frames=1, sink_chunks=1, window_chunks=4))
    pipe.prepare(prompt="claymation")
    for frame in frames:
        for out in pipe(frame):      # the frames finished by this one: often none, then a whole chunk
            show(out)
    for out in pipe.flush():         # the end of the stream: the last, incomplete chunk
        show(out)

Frame path, one chunk of `chunk_frames` = k latent frames at a time:
1. incoming frames are collected until the chunk is full: the stream's first chunk is 1 + 4(k−1) video
   frames (the Wan VAE encodes the first frame alone), every later one 4k;
2. encoded by `WanEncoderStream` (the causal VAE's own conv caches carry the earlier frames), taken as
   the latent mean and normalised with the VAE's `latents_mean`/`latents_std` as diffusers' Wan pipelines do;
3. noised to the first stage: x = (1 − σ₀)·x₀ + σ₀·ε (flow matching; the noise is drawn on the device
   from the stream's seeded generator, `generators.device_generator`: no host→device copy per chunk);
4. denoised by `CausalWanTransformer` over the stages, each call reading the rolling K/V cache (sinks + a
   window of earlier chunks) and never writing it, the `sampler` taking x from one stage to the next; then
   `finish_chunk` writes the chunk into the cache (`cache_after="final"`: one more pass over the clean result)
   after step 5, as the chunk's last step;
5. decoded by `WanDecoderStream` (its own conv caches) and returned as frames, in order.

A chunk is all or nothing (module `rollback`): when its computation raises (an error, or Ctrl-C while it
computes), its frames stay collected and the VAE streams, the noise and the K/V cache are as before it, so
the next call or `flush()` computes it again and the output is what an uninterrupted stream gives.

Schedule. The stages are picked, as in the other pipelines, by `t_index_list` (indices 0..49; larger =
less noise = a weaker edit; `set_strength` maps a strength to them) from a 50-entry table: the sigmas of
diffusers' `FlowMatchEulerDiscreteScheduler(shift=flow_shift)`, Wan's flow-matching scheduler, with its
timestep = 1000·σ. Between stages the `sampler` option (module `sampler`): "renoise" (default), predict
x₀ = x − σ·v and re-noise it to the next sigma with fresh noise from the stream's generator, the sampler the
DMD-distilled causal models (CausVid, Self-Forcing, StreamDiffusionV2) were trained with; or "euler", the
deterministic step x ← x + (σ_next − σ)·v of `FlowMatchEulerDiscreteScheduler.step`. After the last stage
σ_next = 0 and both land on x₀ = x − σ·v. Either way a chunk's output is a pure function of its input, the
cache and the stream's seeded generator, which is what makes the pipeline testable against a hand-run of
its parts; neither needs a multistep history across chunks (with 1–4 stages UniPC's higher order brings
nothing).

Text. The prompt is tokenised and encoded once per prompt (`prepare`, `update_prompt`), with the
tokens past the prompt's end zeroed as diffusers' Wan pipelines do, and then projected once too: the
transformer's text projection and every cross-attention layer's keys/values (after `norm_k`) are
computed right there (`bind_text`, `attention.PromptKV`) and every transformer call of the prompt
reads them (on an accelerator they are the graph's text inputs, the same tensors every call). A call
with another text tensor, or after an in-place edit of this one, computes them again.

No classifier-free guidance: the causal models are distilled to run without it, so a negative prompt
or a guidance_scale above 1 is refused (cfg_type none/self are accepted and do nothing).

Prompt change policy: re-anchor. `update_prompt` empties the transformer's K/V cache, sinks included,
and positions restart at frame 0: the next chunk is denoised with the new prompt and becomes the new
sink. The old sinks would otherwise stay in the cache forever and keep pulling every later chunk back
towards the old prompt. The VAE streams (which encode the input and decode the output, not the prompt)
and the frames already collected for the next chunk are kept, so the output stays continuous and no
input frame is lost; the new prompt shows from the first chunk finished after the call.

Latency, honestly: a frame comes out when its chunk is complete and processed, so a chunk of k latent
frames holds up to 4k video frames (1 + 4(k−1) for the first chunk) before any of them is returned; with
the default k = 1, the first frame comes out at once and then four at a time, every fourth frame.
`latency_frames` says how many frames the current chunk needs.

End of stream: `flush()` completes the last chunk by repeating its last frame, returns only the real
frames, and ends the stream (the next frame starts a new one, as after `reset()`); a flush that raises
keeps the stream and its frames (all or nothing, above).

What happens to the frames collected for an incomplete chunk (none is ever lost without saying so):
- `update_prompt` / `prepare`: kept; the chunk is denoised with the new prompt (re-anchor, above).
- `set_seed`: kept, and the stream goes on: the generator is reseeded, so the chunk being collected and
  every later one draw their noise from the new seed; the caches stay (a seed is noise, not context, so
  there is nothing to re-anchor). Reproducible: the same frames with `set_seed` at the same point give the
  same output, and a stream started after `set_seed(s)` (or `reset()`) is the seed-s stream, on the same
  kind of device: the generator lives on the device, and CPU and CUDA generators are different algorithms
  that give different noise for one seed.
- `reset`: dropped on purpose (the caller abandons the stream, e.g. a new input source whose frames must
  not be denoised with the old ones); it returns how many were dropped. Call `flush()` first to have them
  finished instead.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch

from livediff.errors import ConfigError
from livediff.pipelines import checks
from livediff.pipelines.causal.models import CausalModels
from livediff.pipelines.causal.options import CausalVideoOptions
from livediff.pipelines.causal.rollback import rollback_on_error
from livediff.pipelines.causal.runners import causal_transformer
from livediff.pipelines.causal.sampler import noised, step
from livediff.pipelines.causal.vae import FRAMES_PER_LATENT, WanDecoderStream, WanEncoderStream
from livediff.pipelines.config import StreamConfig, StreamSettings
from livediff.pipelines.frames import FrameKind, from_model_tensor, host_frames
from livediff.pipelines.generators import device_generator
from livediff.pipelines.stream_state import (STATE_VERSION, check_state, cloned, copy_into, generator_state,
                                             set_generator_state, to_device)
from livediff.pipelines.schedule import TABLE_STEPS, strength_to_t_index_list, validate_t_index_list

#: longest prompt in tokens (Wan's pipelines use 512)
MAX_TEXT_TOKENS = 512


@dataclass(frozen=True)
class FlowSchedule:
    """The stages' sigmas and timesteps (1000·σ), picked from the 50-entry shifted flow-matching table."""

    sigmas: tuple[float, ...]
    timesteps: tuple[float, ...]

    @classmethod
    def build(cls, t_index_list, shift: float) -> "FlowSchedule":
        from diffusers import FlowMatchEulerDiscreteScheduler

        indices = validate_t_index_list(t_index_list)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        scheduler.set_timesteps(TABLE_STEPS)
        sigmas = [float(scheduler.sigmas[i]) for i in indices]
        return cls(tuple(sigmas), tuple(float(scheduler.timesteps[i]) for i in indices))

    def next_sigma(self, stage: int) -> float:
        return self.sigmas[stage + 1] if stage + 1 < len(self.sigmas) else 0.0


class CausalVideoPipeline:
    """One causal video stream over shared networks (see the module docstring).

    `__call__(frame)` returns the list of frames it finished (possibly empty); `flush()` the rest.
    Attributes worth reading: `cache` (the `RollingKVCache`), `encoder`/`decoder` (the VAE streams),
    `schedule`, `latency_frames`.
    """

    def __init__(self, config: StreamConfig, models: CausalModels, backend=None):
        if config.mode != "causal-video" or not isinstance(config.causal, CausalVideoOptions):
            raise ConfigError("CausalVideoPipeline needs a StreamConfig of mode 'causal-video'")
        self.config = config
        self.options: CausalVideoOptions = config.causal
        self.settings = StreamSettings.from_config(config)
        self.models = models
        self.device = torch.device(config.device)
        self.dtype = models.transformer.dtype
        vae = models.vae
        self.vae_dtype = vae.dtype
        scale = 2 ** len(vae.config.temperal_downsample)
        #: text length of the prompt embeddings (the tokenizer's padded length, at most Wan's 512)
        self.text_tokens = min(MAX_TEXT_TOKENS, models.tokenizer.model_max_length)
        # eager: CausalWanTransformer; an accelerator: its graph of one call (`pipelines.causal.runners`)
        self.causal = causal_transformer(models.transformer, self.options.transformer_config, backend,
                                         self.text_tokens, scale)
        self.latent_hw = (config.height // scale, config.width // scale)
        _, p_h, p_w = models.transformer.config.patch_size
        if self.latent_hw[0] % p_h or self.latent_hw[1] % p_w:
            raise ConfigError(f"{config.width}x{config.height} gives {self.latent_hw[1]}x{self.latent_hw[0]} latents, "
                              f"not a multiple of the transformer's {p_w}x{p_h} patches")
        if vae.config.z_dim != models.transformer.config.in_channels:
            raise ConfigError(f"the VAE's {vae.config.z_dim} latent channels do not match the transformer's "
                              f"{models.transformer.config.in_channels} input channels")
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.latents_mean = torch.tensor(vae.config.latents_mean, dtype=self.dtype, device=self.device).view(shape)
        self.latents_inv_std = (1.0 / torch.tensor(vae.config.latents_std, dtype=torch.float64)).to(
            self.device, self.dtype).view(shape)
        self.encoder, self.decoder = WanEncoderStream(vae), WanDecoderStream(vae)
        self.text: torch.Tensor | None = None
        self.prompt: str | None = None
        self._build_stream()

    # --- set-up -----------------------------------------------------------------------------
    def _build_stream(self) -> None:
        """A new stream: empty caches (transformer and VAE), no collected frames, the seed's noise."""
        self.schedule = FlowSchedule.build(self.settings.t_index_list, self.options.flow_shift)
        if getattr(self, "cache", None) is None:
            self.cache = self.causal.new_cache(1, *self.latent_hw, dtype=self.dtype, device=self.device)
        else:
            self.cache.reset()  # the same tensors, so a captured CUDA graph keeps reading them
        self.encoder.reset()
        self.decoder.reset()
        self._pending: list[torch.Tensor] = []
        self._kinds: list[FrameKind] = []
        #: frames finished, not returned yet: left by a call that raised after finishing an earlier chunk
        self._ready: list = []
        self._noise = device_generator(self.device, self.settings.seed)
        #: chunks denoised since the stream started (across prompt changes)
        self.chunks = 0

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """(1, L, text_dim) text embeddings; tokens past the prompt's end are zero (as diffusers' Wan)."""
        tokenizer = self.models.tokenizer
        length = self.text_tokens
        tokens = tokenizer([prompt], padding="max_length", max_length=length, truncation=True,
                           return_attention_mask=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        with torch.no_grad():
            hidden = self.models.text_encoder(ids, mask).last_hidden_state
        return (hidden * mask[..., None].to(hidden.dtype)).to(self.dtype)

    def prepare(self, prompt: str, negative_prompt: str = "", guidance_scale: float = 1.0,
                delta: float = 1.0) -> None:
        """Set the prompt (encoded here, once). Like a prompt change it re-anchors the cache."""
        checks.text("prompt", prompt)
        checks.text("negative_prompt", negative_prompt)
        self._check_guidance(guidance_scale, delta)
        if negative_prompt:
            raise ConfigError("mode 'causal-video' runs distilled causal models without classifier-free guidance: "
                              "leave negative_prompt empty")
        self._set_prompt(prompt)

    def set_guidance(self, guidance_scale: float | None = None, delta: float | None = None,
                     cfg_type: str | None = None) -> None:
        """The image pipelines' live guidance setter, for callers that drive every mode alike (the UI):
        values that mean "no classifier-free guidance" are accepted and change no output, any other is refused."""
        self._check_guidance(1.0 if guidance_scale is None else guidance_scale, 1.0 if delta is None else delta)
        if cfg_type in ("full", "initialize"):
            raise ConfigError(f"cfg_type {cfg_type!r}: mode 'causal-video' runs distilled causal models without "
                              f"classifier-free guidance; use 'none' or 'self'")
        if cfg_type is not None:
            self.settings = replace(self.settings, cfg_type=cfg_type)  # validates the name

    @staticmethod
    def _check_guidance(guidance_scale: float, delta: float) -> None:
        checks.number("guidance_scale", guidance_scale, 0.0, 20.0)
        checks.number("delta", delta, 0.0, 2.0)
        if guidance_scale > 1.0:
            raise ConfigError(f"guidance_scale {guidance_scale!r}: mode 'causal-video' runs distilled causal models "
                              f"without classifier-free guidance; use 1 or below")

    def update_prompt(self, prompt: str, negative_prompt: str | None = None) -> None:
        """Change the prompt live; the policy is re-anchoring (see the module docstring)."""
        if self.text is None:
            raise ConfigError("no prompt yet: call prepare(prompt=...) before running frames")
        checks.text("prompt", prompt)
        if negative_prompt:
            raise ConfigError("mode 'causal-video' runs without classifier-free guidance: no negative prompt")
        self._set_prompt(prompt)

    def _set_prompt(self, prompt: str) -> None:
        self.text = self.encode_prompt(prompt)
        self.causal.bind_text(self.text)  # projection and cross-attention K/V, once per prompt
        self.prompt = prompt
        self.cache.reset()  # re-anchor: the next chunk is the new sink, at frame 0

    def set_strength(self, strength: float) -> None:
        """Map a strength in (0,1] to a t_index_list with the current number of stages."""
        self.set_t_index_list(strength_to_t_index_list(strength, len(self.settings.t_index_list)))

    def set_t_index_list(self, t_index_list) -> None:
        """New stages from the next chunk on (the cache holds clean context and stays)."""
        self.settings = replace(self.settings, t_index_list=t_index_list)
        self.schedule = FlowSchedule.build(self.settings.t_index_list, self.options.flow_shift)

    def set_seed(self, seed: int) -> None:
        """Reseed the noise from the chunk being collected on; the stream, its caches and the frames
        collected so far are kept (module docstring: a seed is noise, not context)."""
        self.settings = replace(self.settings, seed=seed)  # validates it
        self._noise = device_generator(self.device, seed)

    def reset(self) -> int:
        """Back to a fresh stream with the same settings and prompt. The frames collected for the
        incomplete chunk are dropped on purpose (`flush()` first finishes them); returns how many."""
        dropped = len(self._pending) + len(self._ready)
        self._build_stream()
        return dropped

    def stream_state(self) -> dict[str, Any]:
        """Everything the next frames depend on besides the settings and the prompt, as plain data
        (`pipelines.stream_state`): the K/V cache (ring and chunk count), the VAE streams' conv caches
        and frame counts, the noise generator, the chunks counter and the frames collected for the
        incomplete chunk (with the kinds they came in)."""
        if self._ready:
            raise ConfigError("a chunk was interrupted half-way: return its frames (call the pipeline or flush()) "
                              "before saving the stream state")
        encoded, encoder_frames = self.encoder.snapshot()
        decoded, decoder_frames = self.decoder.snapshot()
        return {"version": STATE_VERSION, "key": self._state_key(),
                "cache": {"keys": {n: t.clone() for n, t in self.cache.keys.items()},
                          "values": {n: t.clone() for n, t in self.cache.values.items()},
                          "filled": self.cache.filled.clone(), "chunks": self.cache.chunks},
                "encoder": {"cache": [cloned(c) for c in encoded], "frames": encoder_frames},
                "decoder": {"cache": [cloned(c) for c in decoded], "frames": decoder_frames},
                "noise": generator_state(self._noise), "chunks": self.chunks,
                "pending": [p.clone() for p in self._pending],
                "kinds": [[k.kind, k.batched, k.unbatched_tensor] for k in self._kinds]}

    def load_stream_state(self, state: Mapping[str, Any]) -> None:
        """Continue the stream `state` was taken from (`stream_state`); refused, naming the
        difference, when it was saved under other settings. The K/V ring is copied in place (a
        captured graph keeps reading the same tensors)."""
        check_state(state, self._state_key())
        cache = state["cache"]
        for name in self.cache.layers:
            copy_into(self.cache.keys[name], cache["keys"][name], f"keys of {name}")
            copy_into(self.cache.values[name], cache["values"][name], f"values of {name}")
        copy_into(self.cache.filled, cache["filled"], "cache slots")
        self.cache.chunks = cache["chunks"]
        here = self.device
        self.encoder.restore(([to_device(c, here) for c in state["encoder"]["cache"]], state["encoder"]["frames"]))
        self.decoder.restore(([to_device(c, here) for c in state["decoder"]["cache"]], state["decoder"]["frames"]))
        set_generator_state(self._noise, state["noise"])
        self.chunks = state["chunks"]
        self._pending = [p.to(here) for p in state["pending"]]
        self._kinds = [FrameKind(kind, batched=batched, unbatched_tensor=unbatched)
                       for kind, batched, unbatched in state["kinds"]]
        self._ready = []

    def _state_key(self) -> dict[str, Any]:
        """The settings a stream state only fits under (as plain values, compared on load)."""
        return {"pipeline": type(self).__name__, "size": [self.config.width, self.config.height],
                "seed": self.settings.seed, "t_index_list": [int(t) for t in self.settings.t_index_list],
                "causal": repr(self.options)}

    def networks(self) -> dict[str, torch.nn.Module]:
        """The networks whose weights decide the output (for a job's identity)."""
        return {"transformer": self.models.transformer, "vae": self.models.vae,
                "text_encoder": self.models.text_encoder}

    @property
    def chunk_video_frames(self) -> int:
        """Video frames of the chunk being collected: 1 + 4(k−1) for the stream's first, 4k later."""
        k = self.options.chunk_frames
        return 1 + FRAMES_PER_LATENT * (k - 1) if self.encoder.frames == 0 else FRAMES_PER_LATENT * k

    @property
    def latency_frames(self) -> int:
        """Frames still needed before the chunk being collected is processed and returned."""
        return self.chunk_video_frames - len(self._pending)

    # --- running ----------------------------------------------------------------------------
    def __call__(self, frame, *, output: str = "same") -> list:
        """One frame in (PIL image, array or tensor); the frames this one finished out, oldest first, each
        in the kind its input came in (`output="tensor"`: float tensors in [0, 1] on the device)."""
        if self.text is None:
            raise ConfigError("no prompt yet: call prepare(prompt=...) before running frames")
        if output not in ("same", "tensor"):
            raise ConfigError(f"output {output!r} is not one of same, tensor")
        frames = host_frames(frame, self.config.height, self.config.width, 1)
        kind = FrameKind("torch", batched=frames.kind.batched) if output == "tensor" else frames.kind
        self._pending.append(frames.to_model(self.device, self.vae_dtype)[0])
        self._kinds.append(kind)
        return self._run_held(end=False)

    def flush(self) -> list:
        """The frames still held (an incomplete last chunk, completed by repeating its last frame; only the
        real frames are returned); then the stream ends: the next frame starts a new one."""
        finished = self._run_held(end=True)
        self.reset()
        return finished

    def _run_held(self, end: bool) -> list:
        """Every whole chunk held (more than one only after a chunk raised) and at the `end` the incomplete
        one, oldest first; returns the frames finished since the last return."""
        while len(self._pending) >= self.chunk_video_frames or (end and self._pending):
            self._run_oldest_chunk()
        finished, self._ready = self._ready, []
        return finished

    def _run_oldest_chunk(self) -> None:
        """The oldest held chunk (padded with its last frame when incomplete), all or nothing: its frames
        leave `_pending` for `_ready` only once the K/V cache took it, the last step."""
        real = min(len(self._pending), self.chunk_video_frames)
        frames = self._pending[:real] + [self._pending[real - 1]] * (self.chunk_video_frames - real)
        with rollback_on_error(self.encoder, self.decoder, self.cache, self._noise):
            clean, decoded = self.restyle(torch.stack(frames, dim=1)[None])
            finished = [from_model_tensor(decoded[:, :, i], self._kinds[i]) for i in range(real)]
            self.finish_chunk(clean)
            self._ready += finished
            del self._pending[:real], self._kinds[:real]

    @torch.no_grad()
    def restyle(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 3, T, H, W) frames in [-1, 1] (a whole chunk) → its restyled latents (for `finish_chunk`)
        and frames, (1, 3, T, H, W) in [-1, 1]. The K/V cache is only read (module `rollback`)."""
        mean = self.encoder(video.to(self.vae_dtype))
        latents = (mean.to(self.dtype) - self.latents_mean) * self.latents_inv_std
        clean = self.sample(latents)
        return clean, self.decoder((clean / self.latents_inv_std + self.latents_mean).to(self.vae_dtype))

    def denoise(self, clean: torch.Tensor) -> torch.Tensor:
        """One chunk's normalised latents → its restyled latents; the chunk is then written to the cache."""
        x = self.sample(clean)
        self.finish_chunk(x)
        return x

    def sample(self, clean: torch.Tensor) -> torch.Tensor:
        """One chunk's normalised latents → its restyled latents, the K/V cache only read (staged into)."""
        def draw() -> torch.Tensor:  # from the stream's seeded generator, so a run is reproducible
            return torch.randn(clean.shape, generator=self._noise, dtype=self.dtype, device=self.device)

        x = noised(clean, self.schedule.sigmas[0], draw())
        for stage, (sigma, t) in enumerate(zip(self.schedule.sigmas, self.schedule.timesteps)):
            velocity = self.causal(x, t, self.text, self.cache)
            x = step(self.options.sampler, x, velocity, sigma, self.schedule.next_sigma(stage), draw)
        return x

    def finish_chunk(self, restyled: torch.Tensor) -> None:
        """Write the chunk (its restyled latents) into the K/V cache as context for the next chunks."""
        self.causal.finish_chunk(self.cache, clean=restyled, text=self.text)
        self.chunks += 1
