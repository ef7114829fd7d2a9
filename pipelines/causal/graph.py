"""The causal transformer as a pure function of tensors (issue 16, item 4): what every backend runs.

One denoising call of one chunk, with the rolling cache as explicit inputs and the chunk's new
keys/values as outputs, the way `networks.BankedUNetFunction` takes the feature bank:

    inputs:  latents (B, C, chunk_frames, h, w), timestep (B,),
             rotary_cos, rotary_sin (B, chunk_tokens, 1, head_dim): the chunk's rotary tables at its
             absolute frame (`rotary_tables`), then the prompt: per cross-attention layer its text keys
             (after `norm_k`) and values (B, L, heads, head_dim), computed once per prompt outside the
             graph (`text_inputs`, `attention.PromptKV`) and passed as the same tensors every call, then
             the cache: per self-attention layer its keys and values (B, slots·chunk_tokens, heads,
             head_dim), then cache_filled (B, slots·chunk_tokens), 1 where a slot's token holds a chunk,
             0 where it is empty
    outputs: noise_pred (B, C_out, chunk_frames, h, w), then per layer the chunk's new keys and values
             (B, chunk_tokens, heads, head_dim), rotated: what `RollingKVCache.commit` writes

Everything Python-side in the eager runner stays outside the graph: the ring (which slot the next
chunk goes to, `RollingKVCache.commit` via `stage_outputs`), how many chunks were seen (the fill mask
is a tensor input) and the chunk's frame position (the rotary tables are inputs; they are computed
on the device, in float64 where the model is float64, else in float32, never in 16 bits). So one
graph serves the whole stream: every shape is fixed by the resolution, the chunk size, the cache size
and the text length (`variant`); only the rows axis (axis 0 of everything) may vary, and rows may
even belong to different streams (each row has its own positions and fill mask). `inputs_for` gives
every input at the same address call after call (`FixedInputs`, `PromptKV(keep_addresses=True)`, the
cache's own tensors), so a CUDA graph captured once replays the whole stream (`state_inputs`: all).

The self-attention processors are the eager runner's own (`attention.CausalSelfAttnProcessor`), on
another weight-sharing copy of the model: they read a `GraphCacheCall` where the eager runner gives
them a `RollingKVCache`. So are the cross-attention ones (`attention.CachedTextCrossAttnProcessor`):
they read the text keys/values inputs where the eager runner gives them its `PromptKV`'s; the graph
holds no text projection at all.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from livediff.errors import ConfigError, InputError
from livediff.network_inputs import NetworkInputs
from livediff.network_outputs import NetworkOutputs
from livediff.networks import TensorFunction, by_name
from livediff.pipelines.causal.attention import (PromptKV, causal_copy, check_chunk_frames, chunk_rotary,
                                                 cross_attention_layers, fits, token_grid)
from livediff.pipelines.causal.cache import RollingKVCache
from livediff.pipelines.causal.config import CausalConfig

#: Wan 2.1's text encoder (UMT5) pads prompts to 512 tokens
WAN_TEXT_TOKENS = 512
#: Wan 2.1's VAE: 8x spatial compression
WAN_VAE_SCALE_FACTOR = 8
BASE_INPUTS = ("latents", "timestep", "rotary_cos", "rotary_sin")


class GraphCacheCall:
    """The cache as the processors see it during one call of the function: its tensors come in as
    inputs (`read`) and the chunk's keys/values go out as outputs (`stage` collects them)."""

    def __init__(self, keys: dict, values: dict, filled: torch.Tensor):
        self.keys, self.values, self.filled = keys, values, filled
        self.staged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def read(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.keys[layer], self.values[layer], self.filled

    def stage(self, layer: str, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.staged[layer] = (keys, values)


class FixedInputs:
    """The function's per-call inputs in buffers at fixed addresses, refilled in place every call.

    A CUDA graph (`compile` with CUDA graphs) replays reading every input where it was at capture: the
    latents, timestep, rotary tables and fill mask of each call are therefore copied into the same
    tensors (a new buffer only when a shape, dtype or device changes), as the cache's keys/values and
    the prompt's keys/values (`PromptKV(keep_addresses=True)`) already are. The copies are a few small
    tensors per call; the cache is read where it lives.
    """

    def __init__(self):
        self._buffers: dict[str, torch.Tensor] = {}

    def put(self, name: str, value: torch.Tensor | float, shape: Sequence[int], dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
        """`name`'s buffer of (shape, dtype, device) holding `value` (a number, or a tensor broadcast to it)."""
        buffer = self._buffers.get(name)
        if not fits(buffer, shape, dtype, device):
            buffer = self._buffers[name] = torch.empty(tuple(shape), dtype=dtype, device=device)
        with torch.no_grad():
            return buffer.copy_(value) if isinstance(value, torch.Tensor) else buffer.fill_(value)


class RotaryInput:
    """Where the function puts the call's rotary tables for `TableRotary` (a plain object, like the slot)."""

    def __init__(self):
        self.tables: tuple[torch.Tensor, torch.Tensor] | None = None


class TableRotary(nn.Module):
    """Replaces the model's `rope` in the function's copy: the call's rotary tables are graph inputs."""

    def __init__(self, rope: nn.Module, source: RotaryInput):
        super().__init__()
        self.rope = rope  # the model's own (its tables size the inputs; shared buffers)
        self.source = source

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.tables


def rotary_dtype(dtype: torch.dtype) -> torch.dtype:
    """Rotary tables stay in float32 under a 16-bit model (as diffusers computes them), else the model's dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class CausalTransformerFunction(TensorFunction):
    """One denoising call of a chunk of the block-causal Wan transformer, as a function of tensors
    (see the module docstring for the inputs and outputs)."""

    name = "causal_transformer"
    spatial_multiple = WAN_VAE_SCALE_FACTOR * 2

    def __init__(self, model, config: CausalConfig, text_tokens: int = WAN_TEXT_TOKENS,
                 vae_scale_factor: int = WAN_VAE_SCALE_FACTOR):
        super().__init__()
        check_chunk_frames(model, config)
        _, p_h, p_w = model.config.patch_size
        if not isinstance(text_tokens, int) or text_tokens < 1:
            raise ConfigError(f"text_tokens {text_tokens!r} must be a positive integer")
        self.config = config
        self.text_tokens = text_tokens
        self.vae_scale_factor = vae_scale_factor
        self.spatial_multiple = vae_scale_factor * max(p_h, p_w)
        self.model, self.slot, self.layers = causal_copy(model)
        self._rotary = RotaryInput()
        self.model.rope = TableRotary(self.model.rope.rope, self._rotary)  # drop the slot's frame offset
        self.heads = model.config.num_attention_heads
        self.head_dim = model.config.attention_head_dim
        self.in_channels = model.config.in_channels
        self.out_channels = model.config.out_channels
        #: the text cross-attention layers, and the prompt's keys/values computed once per prompt
        self.text_layers = cross_attention_layers(self.model)
        self.prompt = PromptKV(self.model, self.text_layers, keep_addresses=True)
        self.fixed = FixedInputs()
        modules = dict(self.model.named_modules())
        self.text_shapes = [(modules[name].heads, modules[name].to_v.out_features // modules[name].heads)
                            for name in self.text_layers]
        self.input_names = (*BASE_INPUTS, *(f"text_{kind}.{layer}" for layer in self.text_layers
                                            for kind in ("key", "value")),
                            *(f"cache_{kind}.{layer}" for layer in self.layers for kind in ("key", "value")),
                            "cache_filled")
        self.output_names = ("noise_pred", *(f"new_{kind}.{layer}" for layer in self.layers
                                             for kind in ("key", "value")))

    # --- shapes -----------------------------------------------------------------------------------

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        f = self.vae_scale_factor
        if height % self.spatial_multiple or width % self.spatial_multiple:
            raise ConfigError(f"the causal transformer's graph needs a resolution that is a multiple of "
                              f"{self.spatial_multiple} pixels, got {height}x{width}")
        return height // f, width // f

    def chunk_tokens(self, latent_h: int, latent_w: int) -> int:
        frames, rows, cols = token_grid(self.model, (1, 1, self.config.chunk_frames, latent_h, latent_w))
        return frames * rows * cols

    def variant(self) -> tuple:
        c = self.config
        return (("causal", ("chunk_frames", c.chunk_frames), ("sink_chunks", c.sink_chunks),
                 ("window_chunks", c.window_chunks)), ("text_kv_tokens", self.text_tokens), ("layers", len(self.layers)))

    def state_inputs(self) -> tuple[int, ...]:
        """Every input: `inputs_for` gives each at the same address call after call (`FixedInputs`)."""
        return tuple(range(len(self.input_names)))

    def example_inputs(self, rows, height, width, dtype, device):
        h, w = self.latent_size(height, width)
        tokens = self.chunk_tokens(h, w)
        slots = self.config.cache_chunks * tokens
        latents = torch.randn(rows, self.in_channels, self.config.chunk_frames, h, w, dtype=dtype, device=device)
        timestep = torch.linspace(999, 1, rows, dtype=torch.float32, device=device)
        text = [torch.randn(rows, self.text_tokens, heads, dim, dtype=dtype, device=device)
                for heads, dim in self.text_shapes for _ in range(2)]
        # a stream some chunks in: rotary at its frame, the cache partly filled
        chunks = max(1, self.config.cache_chunks - 1)
        cos, sin = (t.expand(rows, -1, -1, -1).contiguous()
                    for t in self.rotary_tables(chunks * self.config.chunk_frames, (h, w), dtype, device))
        kv = [torch.randn(rows, slots, self.heads, self.head_dim, dtype=dtype, device=device)
              for _ in range(2 * len(self.layers))]
        filled = (torch.arange(slots, device=device) < chunks * tokens).to(dtype).expand(rows, slots).contiguous()
        return (latents, timestep, cos, sin, *text, *kv, filled)

    def output_shapes(self, inputs):
        latents = inputs[0]
        rows, _, frames, h, w = latents.shape
        chunk = (rows, self.chunk_tokens(h, w), self.heads, self.head_dim)
        return [(rows, self.out_channels, frames, h, w), *([chunk] * (2 * len(self.layers)))]

    def spatial_axes(self):
        raise ConfigError("the causal transformer's graph has a static resolution (its cache sizes follow from it); "
                          "build it without a resolution range")

    def adapt_inputs(self, latents, timestep, *rest):
        return (latents.contiguous(), timestep.to(torch.float32).contiguous(), *(t.contiguous() for t in rest))

    # --- between calls: what stays outside the graph -----------------------------------------------

    def rotary_tables(self, frame_offset: int, latent_hw: tuple[int, int], dtype: torch.dtype | None = None,
                      device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, chunk_tokens, 1, head_dim) (one row: every row of a call has the position),
        of a chunk starting at latent frame `frame_offset` (`RollingKVCache.next_frame`), computed on the
        model's device."""
        rope = self.model.rope.rope
        p_t, p_h, p_w = rope.patch_size
        grid = (self.config.chunk_frames // p_t, latent_hw[0] // p_h, latent_hw[1] // p_w)
        cos, sin = chunk_rotary(rope, frame_offset // p_t, grid)
        target = rotary_dtype(dtype or cos.dtype)
        return tuple(t.to(device=device or t.device, dtype=target) for t in (cos, sin))

    def cache_inputs(self, cache: RollingKVCache, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The cache's inputs by name: every layer's keys and values (the cache's own tensors, read where
        they live) and the fill mask as 0/1 per row (copied into its fixed buffer)."""
        if tuple(cache.layers) != tuple(self.layers):
            raise ConfigError(f"this cache holds layers {list(cache.layers)}, the function has {list(self.layers)}")
        keys = cache.keys[self.layers[0]]
        filled = self.fixed.put("cache_filled", cache.filled, (cache.chunk_shape[0], cache.filled.shape[0]),
                                dtype or keys.dtype, keys.device)
        return {**{f"cache_key.{layer}": cache.keys[layer] for layer in self.layers},
                **{f"cache_value.{layer}": cache.values[layer] for layer in self.layers}, "cache_filled": filled}

    def text_inputs(self, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prompt's inputs: every cross-attention layer's text keys and values of `text` (B, L, text_dim),
        computed where `text` lives when it is a new tensor or was edited in place (`PromptKV.bind`, which
        copies a new prompt into the same tensors), else the same tensors as the call before."""
        if text.shape[1] != self.text_tokens:
            raise InputError(f"the causal transformer's graph takes {self.text_tokens} text tokens, got "
                             f"{text.shape[1]}")
        with torch.no_grad():
            self.prompt.bind(text)
        return {f"text_{kind}.{layer}": t for layer in self.text_layers
                for kind, t in zip(("key", "value"), self.prompt.kv[layer])}

    def inputs_for(self, latents: torch.Tensor, timestep: torch.Tensor | float, text: torch.Tensor,
                   cache: RollingKVCache) -> NetworkInputs:
        """Every input of one call on `cache`'s next chunk (what the eager `CausalWanTransformer` call takes:
        `timestep` a number or one value per row), each at the same address as the call before (`FixedInputs`:
        the next call overwrites them, so use them before it); the text's keys/values are computed once per
        prompt (`text_inputs`)."""
        rows, device = latents.shape[0], latents.device
        cos, sin = (self.fixed.put(name, table, (rows, *table.shape[1:]), table.dtype, device)
                    for name, table in zip(("rotary_cos", "rotary_sin"), self.rotary_tables(
                        cache.next_frame, tuple(latents.shape[-2:]), latents.dtype, device)))
        return NetworkInputs.join({"latents": self.fixed.put("latents", latents, latents.shape, latents.dtype, device),
                                   "timestep": self.fixed.put("timestep", timestep, (rows,), torch.float32, device),
                                   "rotary_cos": cos, "rotary_sin": sin},
                                  self.text_inputs(text), self.cache_inputs(cache, latents.dtype))

    def stage_outputs(self, cache: RollingKVCache, outputs: NetworkOutputs | Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage a call's new keys/values in `cache` (its owner commits them: the ring placement) and
        return the prediction; `outputs` from a runner, or what this function itself returned."""
        outputs = NetworkOutputs.of(self, outputs)
        for layer in self.layers:
            cache.stage(layer, outputs[f"new_key.{layer}"], outputs[f"new_value.{layer}"])
        return outputs["noise_pred"]

    # --- the function ------------------------------------------------------------------------------

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, rotary_cos: torch.Tensor,
                rotary_sin: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = by_name(self.input_names, (latents, timestep, rotary_cos, rotary_sin, *rest))
        keys = {layer: named[f"cache_key.{layer}"] for layer in self.layers}
        values = {layer: named[f"cache_value.{layer}"] for layer in self.layers}
        call = GraphCacheCall(keys, values, named["cache_filled"] > 0.5)
        self.slot.cache = call
        self.slot.text = {layer: (named[f"text_key.{layer}"], named[f"text_value.{layer}"])
                          for layer in self.text_layers}
        self._rotary.tables = (rotary_cos, rotary_sin)
        try:
            # the model's text argument only sets the time embedding's dtype here (the text projection is
            # skipped, cross-attention reads the keys/values): the first text key stands in for it
            prediction = self.model(latents, timestep, named[f"text_key.{self.text_layers[0]}"], return_dict=False)[0]
        finally:
            self.slot.cache = None
            self.slot.text = None
            self._rotary.tables = None
        new = [t for layer in self.layers for t in call.staged[layer]]
        return (prediction, *new)

    def grouped_like_forward(self, per_input: list) -> tuple:
        return (*per_input[:len(BASE_INPUTS)], tuple(per_input[len(BASE_INPUTS):]))
