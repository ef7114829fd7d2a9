"""The block-causal attention of a Wan-layout transformer: which chunks a chunk sees, rotary
positions from a chunk's absolute frame index, and the processors that apply both.

Everything is installed on a weight-sharing copy of the diffusers `WanTransformer3DModel`
(`causal_copy`), so the model shared by the process keeps its own processors and no
model code is duplicated: only the self-attention processors (`attn1`), the rotary module and, in
the causal copy, the text side of cross-attention change. The processors hold no stream state: they
read the call in progress from a `CausalSlot`, a plain object (tracers follow plain attribute reads).

Text, once per prompt. The text reaches cross-attention only through the model's text projection
(`condition_embedder.text_embedder`, text_dim → inner dim) and each layer's `to_k`/`norm_k` and
`to_v`; none depends on the chunk, the timestep or the cache. `PromptKV` computes them once per
distinct text tensor (a new tensor or an in-place edit of the bound one recomputes; the image
pipelines' prompt encoder does the same per prompt, `livediff.cross_attention`); in the causal copy the text projection is skipped
(`PromptTextSkip`) and `CachedTextCrossAttnProcessor` reads each layer's keys/values from the slot.
Queries (`to_q`, `norm_q`) are per call, as in diffusers' `WanAttnProcessor`. Wan's image-to-video
layout (an image branch, `add_k_proj`, in every cross-attention layer) is refused.

Positions. Keys are cached *after* the rotary embedding, each chunk rotated at its absolute latent
frame index (chunk k of `chunk_frames` frames starts at frame k·chunk_frames), and never re-rotated.
Once the window slides, positions keep counting: a cached key keeps the position it was computed at,
exactly as in a recompute of the whole stream with a windowed mask (the reference the tests check
against). Rotary attention depends only on position differences, so a chunk sees its window at the
same distances all stream long; the sinks drift further into the past. The temporal frequencies are
computed for the chunk's positions on demand (constant cost, no table limit); re-anchoring positions
for very long streams ("RoPE refresh") is a pipeline policy built on top of this.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from livediff.errors import ConfigError
from livediff.cross_attention import weight_sharing_copy

ROPE_THETA = 10000.0  # WanTransformer3DModel builds its rotary table with the default theta


def slot_of(chunk: int, sink_chunks: int, window_chunks: int) -> int:
    """Cache slot of the stream's chunk `chunk`: sinks first, then a ring over the window."""
    if chunk < sink_chunks:
        return chunk
    return sink_chunks + (chunk - sink_chunks) % window_chunks


def visible_chunks(chunk: int, sink_chunks: int, window_chunks: int) -> list[int]:
    """Chunks whose tokens chunk `chunk` attends to: the sinks, the last `window_chunks` before it, itself."""
    return [c for c in range(chunk + 1) if c < sink_chunks or c >= chunk - window_chunks]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on (B, N, heads, D) with Wan's interleaved pairs (dims 2i, 2i+1 rotate together)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(x)


def chunk_rotary(rope, frame_offset: int, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (1, f·h·w, 1, D), of a chunk of `grid` = (f, h, w) patches whose first patch is at
    temporal index `frame_offset` (in patches), laid out as diffusers' `WanRotaryPosEmbed` lays them.

    Height and width come from the model's table; the temporal part is computed for the chunk's own
    positions with the same formula as the table, so it equals the table's rows where both exist.
    """
    frames, height, width = grid
    sizes = [rope.t_dim, rope.h_dim, rope.w_dim]
    dtype = torch.float32 if torch.backends.mps.is_available() else torch.float64
    positions = torch.arange(frame_offset, frame_offset + frames, device=rope.freqs_cos.device)
    t_cos, t_sin = get_1d_rotary_pos_embed(rope.t_dim, positions, ROPE_THETA, use_real=True,
                                           repeat_interleave_real=True, freqs_dtype=dtype)
    out = []
    for table, temporal in ((rope.freqs_cos, t_cos), (rope.freqs_sin, t_sin)):
        _, h_part, w_part = table.split(sizes, dim=1)
        parts = [temporal.to(table.dtype).view(frames, 1, 1, -1), h_part[:height].view(1, height, 1, -1),
                 w_part[:width].view(1, 1, width, -1)]
        parts = [part.expand(frames, height, width, -1) for part in parts]
        out.append(torch.cat(parts, dim=-1).reshape(1, frames * height * width, 1, -1))
    return out[0], out[1]


def check_rotary_table(rope) -> None:
    """Refuse a model whose rotary table was not built the way `chunk_rotary` computes positions.

    A table on the `meta` device holds no values to compare (the GPU dry run): nothing to check there;
    on every real device the comparison is exact."""
    if rope.freqs_cos.device.type == "meta":
        return
    rows = min(8, rope.freqs_cos.shape[0])
    cos, sin = chunk_rotary(rope, 0, (rows, 1, 1))
    t_cos, t_sin = rope.freqs_cos[:rows, :rope.t_dim], rope.freqs_sin[:rows, :rope.t_dim]
    if not (torch.equal(cos[0, :, 0, :rope.t_dim], t_cos) and torch.equal(sin[0, :, 0, :rope.t_dim], t_sin)):
        raise ConfigError(f"this transformer's rotary table was not built with theta {ROPE_THETA:g}; the causal "
                          f"path supports Wan's rotary embedding only")


class CausalSlot:
    """Where the owner of a causal copy puts the call in progress.

    frame_offset: absolute latent frame index of the call's first frame (read by `ChunkRotary`).
    cache: the `RollingKVCache` the self-attention layers read and stage into, or None (the chunk
        attends to itself only).
    text: for a causal copy, cross-attention layer → its text (keys, values), each (B, L, heads, D),
        after `norm_k` (`PromptKV.kv`, or the graph's inputs).
    """

    def __init__(self):
        self.frame_offset: int = 0
        self.cache = None
        self.text: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None


class ChunkRotary(torch.nn.Module):
    """Replaces the model's `rope`: the same embedding, at the slot's frame offset instead of 0."""

    def __init__(self, rope, slot: CausalSlot):
        super().__init__()
        self.rope = rope
        self.slot = slot

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p_t, p_h, p_w = self.rope.patch_size
        _, _, frames, height, width = hidden_states.shape
        return chunk_rotary(self.rope, self.slot.frame_offset // p_t, (frames // p_t, height // p_h, width // p_w))


def _projections(attn, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if getattr(attn, "fused_projections", False):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


class CausalSelfAttnProcessor:
    """Wan self-attention of one chunk over [its own keys; the cache's keys of earlier chunks].

    The chunk's keys (after q/k norm and rotary) and values are staged in the cache on every call;
    the cache changes only when its owner commits them (see `RollingKVCache`).
    """

    def __init__(self, name: str, slot: CausalSlot):
        self.name = name
        self.slot = slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or rotary_emb is None:
            raise ConfigError(f"layer {self.name}: the causal processor supports Wan's unmasked rotary "
                              f"self-attention only")
        query, key, value = _projections(attn, hidden_states)
        query = rotate(attn.norm_q(query).unflatten(2, (attn.heads, -1)), *rotary_emb)
        key = rotate(attn.norm_k(key).unflatten(2, (attn.heads, -1)), *rotary_emb)
        value = value.unflatten(2, (attn.heads, -1))
        mask = None
        cache = self.slot.cache
        if cache is not None:
            cache.stage(self.name, key, value)
            cached_key, cached_value, cached_mask = cache.read(self.name)
            key, value = torch.cat([key, cached_key], dim=1), torch.cat([value, cached_value], dim=1)
            if cached_mask.ndim == 1:  # one fill mask for every row (`RollingKVCache`)
                mask = torch.cat([cached_mask.new_ones(query.shape[1]), cached_mask])[None, None, None, :]
            else:  # one per row, (B, S): the graph form, where every input has rows first (`causal.graph`)
                own = cached_mask.new_ones(query.shape[0], query.shape[1])
                mask = torch.cat([own, cached_mask], dim=1)[:, None, None, :]
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def text_key_value(attn, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A Wan cross-attention layer's keys and values of the projected text, (B, L, heads, D), exactly as
    diffusers' `WanAttnProcessor` computes them (`to_k` then `norm_k`; `to_v`; fused `to_kv` alike)."""
    if getattr(attn, "fused_projections", False):
        key, value = attn.to_kv(text).chunk(2, dim=-1)
    else:
        key, value = attn.to_k(text), attn.to_v(text)
    key = attn.norm_k(key)
    return key.unflatten(2, (attn.heads, -1)), value.unflatten(2, (attn.heads, -1))


def fits(buffer: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> bool:
    """Whether `buffer` can take values of that shape, dtype and device in place."""
    return (buffer is not None and tuple(buffer.shape) == tuple(shape) and buffer.dtype == dtype
            and buffer.device == device)


def refill(buffer: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """`value`'s values at `buffer`'s address when it fits them, else `value` itself (a new address)."""
    if not fits(buffer, value.shape, value.dtype, value.device):
        return value
    with torch.no_grad():
        return buffer.copy_(value)


class PromptKV:
    """The text side of every cross-attention layer of a causal copy, computed once per prompt.

    `bind(text)` with the (B, L, text_dim) text embeddings: the model's own text projection
    (`condition_embedder.text_embedder`, the very module the model's forward calls) gives `projected`,
    (B, L, inner), then every layer's keys/values (`text_key_value`) give `kv`. They are recomputed
    only when `text` is not the bound tensor or was edited in place since (its version counter moved);
    a tensor made under `torch.inference_mode` has no version counter, so it is recomputed every bind.

    keep_addresses: a new prompt's keys/values are copied into the previous prompt's tensors (same shapes)
    instead of replacing them, so a graph captured reading them (a CUDA graph) sees the new prompt.
    """

    def __init__(self, model, layers: Sequence[str], keep_addresses: bool = False):
        modules = dict(model.named_modules())
        embedder = model.condition_embedder.text_embedder
        self.project = embedder.inner if isinstance(embedder, PromptTextSkip) else embedder
        self.layers = tuple(layers)
        self.attention = {name: modules[name] for name in self.layers}
        self.keep_addresses = keep_addresses
        self.clear()

    def clear(self) -> None:
        self._text: torch.Tensor | None = None
        self._version: int | None = None
        self.projected: torch.Tensor | None = None
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _version_of(text: torch.Tensor) -> int | None:
        return None if text.is_inference() else text._version

    def bind(self, text: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Layer → (keys, values) of `text`, computed now unless `text` is the bound tensor, unchanged."""
        version = self._version_of(text)
        if text is self._text and version is not None and version == self._version:
            return self.kv
        previous = self.kv if self.keep_addresses else {}
        self.clear()
        projected = self.project(text)
        self.kv = {name: tuple(refill(old, new) for old, new in zip(previous.get(name, (None, None)),
                                                                   text_key_value(attn, projected)))
                   for name, attn in self.attention.items()}
        self._text, self._version, self.projected = text, version, projected
        return self.kv


class PromptTextSkip(torch.nn.Module):
    """Replaces the causal copy's `condition_embedder.text_embedder`: the text is projected once per
    prompt by `PromptKV` (with the module kept here as `inner`), so the model's call passes its text
    argument through untouched; the cross-attention processors read their keys/values from the slot."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return text


class CachedTextCrossAttnProcessor:
    """Wan cross-attention whose text keys/values come from the slot (`PromptKV`, or graph inputs):
    diffusers' `WanAttnProcessor` for a text-only layer, with `to_k`/`norm_k`/`to_v` done once per prompt."""

    def __init__(self, name: str, slot: CausalSlot):
        self.name = name
        self.slot = slot

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None,
                 **kwargs):
        if attention_mask is not None or rotary_emb is not None:
            raise ConfigError(f"layer {self.name}: the causal copy supports Wan's unmasked text cross-attention only")
        text = self.slot.text
        if text is None:
            raise RuntimeError(f"layer {self.name}: a causal copy runs only through CausalWanTransformer or "
                               f"CausalTransformerFunction (they give it the prompt's keys/values)")
        key, value = text[self.name]
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def self_attention_layers(model) -> list[str]:
    """Module paths of the self-attention layers (`blocks.i.attn1`), in block order."""
    names = [name for name, module in model.named_modules()
             if name.endswith(".attn1") and not getattr(module, "is_cross_attention", True)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Wan self-attention layers (blocks.i.attn1)")
    for name, module in model.named_modules():
        if name in names and getattr(module, "add_k_proj", None) is not None:
            raise ConfigError(f"layer {name} has image key/value projections, which the causal path does not support")
    return names


def cross_attention_layers(model) -> list[str]:
    """Module paths of the text cross-attention layers (`blocks.i.attn2`), in block order; Wan's
    image-to-video layout (an image branch in cross-attention) is refused."""
    if getattr(model.condition_embedder, "image_embedder", None) is not None:
        raise ConfigError(f"{type(model).__name__} has an image embedder (Wan's image-to-video layout); the causal "
                          f"path supports the text-to-video layout only")
    names = [name for name, module in model.named_modules()
             if name.endswith(".attn2") and getattr(module, "is_cross_attention", False)]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no Wan text cross-attention layers (blocks.i.attn2)")
    for name, module in model.named_modules():
        if name in names and getattr(module, "add_k_proj", None) is not None:
            raise ConfigError(f"layer {name} has image key/value projections (add_k_proj, Wan's image-to-video "
                              f"layout); the causal path supports the text-to-video layout only")
    return names


def causal_copy(model) -> tuple[torch.nn.Module, CausalSlot, list[str]]:
    """A weight-sharing copy of `model` whose self-attention layers use the rolling cache, whose rotary
    positions start at the slot's frame offset and whose cross-attention reads the prompt's keys/values
    from the slot (`PromptKV`; the layers are `cross_attention_layers(copy)`); the original model is not
    modified."""
    check_rotary_table(model.rope)
    cross = cross_attention_layers(model)
    twin = weight_sharing_copy(model)
    slot = CausalSlot()
    layers = self_attention_layers(twin)
    _install(twin, {name: CausalSelfAttnProcessor(name, slot) for name in layers})
    _install(twin, {name: CachedTextCrossAttnProcessor(name, slot) for name in cross})
    twin.condition_embedder.text_embedder = PromptTextSkip(twin.condition_embedder.text_embedder)
    twin.rope = ChunkRotary(twin.rope, slot)
    return twin, slot, layers


def _install(model, processors: dict) -> None:
    modules = dict(model.named_modules())
    for name, processor in processors.items():
        modules[name].set_processor(processor)


def check_chunk_frames(model, config) -> None:
    """Refuse chunks that do not fill whole temporal patches (a chunk's tokens would straddle two calls)."""
    p_t = model.config.patch_size[0]
    if config.chunk_frames % p_t:
        raise ConfigError(f"causal chunk_frames {config.chunk_frames} must be a multiple of the transformer's "
                          f"temporal patch size {p_t}")


def token_grid(model, latent_shape: Sequence[int]) -> tuple[int, int, int]:
    """(frames, height, width) in patches of a (B, C, F, H, W) latent."""
    p_t, p_h, p_w = model.config.patch_size
    _, _, frames, height, width = latent_shape
    if frames % p_t or height % p_h or width % p_w:
        raise ConfigError(f"latent of {frames}x{height}x{width} (frames x height x width) is not a multiple of the "
                          f"patch size {p_t}x{p_h}x{p_w}")
    return frames // p_t, height // p_h, width // p_w
