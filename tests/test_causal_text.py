"""The text once per prompt (issue 16, item 2): the causal transformer projects the text
(`condition_embedder.text_embedder`) and every cross-attention layer's keys/values (`to_k`, `norm_k`,
`to_v`) once per text tensor (`attention.PromptKV`), not at every call.

* the outputs equal projecting at every call (diffusers' own `WanAttnProcessor` and text projection on
  the same copy), float64 1e-9, over several chunks with the rolling cache, a prompt change and an
  in-place edit of the text tensor;
* counted with forward hooks: the text projection and each layer's `to_k` on the text run once per
  prompt, whatever the number of calls; another tensor or an in-place edit runs them again, and the
  keys/values are then the new prompt's (no stale reuse);
* the graph function computes them once per prompt too and takes the same tensors every call;
* Wan's image-to-video layout (`add_k_proj`, an image embedder) is refused with a sentence.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from livediff.errors import ConfigError
from livediff.pipelines.causal.attention import PromptTextSkip
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.graph import CausalTransformerFunction
from livediff.pipelines.causal.presets import TINY_WAN_CAUSAL, build_tiny_wan_causal
from livediff.pipelines.causal.transformer import CausalWanTransformer

TOL = 1e-9
F64 = torch.float64
BATCH, CHANNELS, LATENT, TEXT = 2, TINY_WAN_CAUSAL["in_channels"], 4, 5
CONFIG = CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=2)  # cache_after="final"


@pytest.fixture(scope="module")
def model():
    return build_tiny_wan_causal(seed=0, dtype=F64)


def texts(n: int, seed: int = 11) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, TEXT, TINY_WAN_CAUSAL["text_dim"], generator=g, dtype=F64) for _ in range(n)]


def chunks(n: int, seed: int = 12) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, CHANNELS, 1, LATENT, LATENT, generator=g, dtype=F64) for _ in range(n)]


def projecting(model, config) -> CausalWanTransformer:
    """The behaviour before: the same causal copy with diffusers' own cross-attention processor and text
    projection back in place, so every call projects the text."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    causal = CausalWanTransformer(model, config)
    modules = dict(causal.model.named_modules())
    for name in causal.text_layers:
        modules[name].set_processor(WanAttnProcessor())
    embedder = causal.model.condition_embedder
    embedder.text_embedder = embedder.text_embedder.inner
    causal.prompt = NoPrompt()
    return causal


class NoPrompt:
    """Binds nothing: the per-call path computes no keys/values ahead."""

    def bind(self, text):
        return None


def count_text_projections(causal) -> Counter:
    """Forward hooks counting calls of the text projection and of every cross-attention layer's to_k."""
    seen = Counter()
    modules = dict(causal.model.named_modules())
    embedder = causal.model.condition_embedder.text_embedder
    inner = embedder.inner if isinstance(embedder, PromptTextSkip) else embedder
    inner.register_forward_hook(lambda *_: seen.update(["text_embedder"]))
    for name in causal.text_layers:
        modules[name].to_k.register_forward_hook(lambda *_, name=name: seen.update([name]))
    return seen


def run(causal, prompts: list[torch.Tensor], latents: list[torch.Tensor], edit_at: int | None = None) -> list:
    """A stream of chunks, two denoising calls each then the clean pass into the cache; prompt k for chunk k
    (a new prompt re-anchors: a fresh cache, as the pipeline does); at `edit_at` the text is edited in place."""
    outs, cache, previous = [], None, None
    with torch.no_grad():
        for k, (chunk, text) in enumerate(zip(latents, prompts)):
            if text is not previous:
                cache, previous = causal.new_cache(BATCH, LATENT, LATENT), text
            if k == edit_at:
                text.mul_(1.5)
            for t in (800.0, 300.0):
                outs.append(causal(chunk, t, text, cache))
            causal.finish_chunk(cache, clean=chunk, text=text)
    return outs


def test_cached_text_equals_projecting_every_call(model):
    """6 chunks (cache empty, filled, sliding) with a prompt change after 3 and an in-place edit at chunk 5:
    every call's output equals the per-call projection within 1e-9 (float64)."""
    one, two = texts(2)
    prompts = [one] * 3 + [two] * 3
    latents = chunks(6)
    cached = run(CausalWanTransformer(model, CONFIG), [p.clone() for p in prompts[:1]] * 3 +
                 [prompts[3].clone()] * 3, latents, edit_at=4)
    expected = run(projecting(model, CONFIG), [p.clone() for p in prompts[:1]] * 3 + [prompts[3].clone()] * 3,
                   latents, edit_at=4)
    assert len(cached) == len(expected) == 12
    assert max(float((a - b).abs().max()) for a, b in zip(cached, expected)) < TOL
    # and the prompts matter: the second prompt's chunks differ from the first prompt's
    same = run(CausalWanTransformer(model, CONFIG), [one.clone()] * 6, latents)
    assert float((cached[-1] - same[-1]).abs().max()) > 1e-3


def test_the_text_is_projected_once_per_prompt(model):
    causal = CausalWanTransformer(model, CONFIG)
    seen = count_text_projections(causal)
    one, two = texts(2, seed=13)
    run(causal, [one] * 4, chunks(4))  # 4 chunks x (2 steps + the clean pass) = 12 calls
    assert seen == Counter({"text_embedder": 1, **{name: 1 for name in causal.text_layers}})
    run(causal, [two] * 2, chunks(2))  # another prompt: once more
    assert seen == Counter({"text_embedder": 2, **{name: 2 for name in causal.text_layers}})
    run(causal, [two] * 2, chunks(2), edit_at=0)  # the same tensor edited in place: once more
    assert seen == Counter({"text_embedder": 3, **{name: 3 for name in causal.text_layers}})
    # the hooks do see every projection: the per-call path projects at each of its 6 calls
    before = projecting(model, CONFIG)
    counted = count_text_projections(before)
    run(before, [one] * 2, chunks(2))
    assert counted == Counter({"text_embedder": 6, **{name: 6 for name in before.text_layers}})


def test_another_prompt_gives_its_own_keys_and_values(model):
    """No stale reuse: after binding prompt two the keys/values are two's (equal to a fresh binding of a
    copy of it), not one's; binding one again gives one's again."""
    causal, fresh = CausalWanTransformer(model, CONFIG), CausalWanTransformer(model, CONFIG)
    one, two = texts(2, seed=14)
    with torch.no_grad():
        first = {name: tuple(t.clone() for t in kv) for name, kv in causal.bind_text(one).kv.items()}
        second = causal.bind_text(two).kv
        expected = fresh.bind_text(two.clone()).kv
        for name in causal.text_layers:
            assert all(float((a - b).abs().max()) > 1e-3 for a, b in zip(second[name], first[name]))
            assert all(torch.equal(a, b) for a, b in zip(second[name], expected[name]))
        again = causal.bind_text(one).kv
        assert all(torch.equal(a, b) for name in causal.text_layers for a, b in zip(again[name], first[name]))
    # projected text: the model's own projection of the prompt
    assert torch.equal(causal.prompt.projected, model.condition_embedder.text_embedder(one))


def test_the_graph_takes_the_same_text_tensors_every_call(model):
    """The function's text inputs are computed once per prompt (hooks on its copy) and are the very same
    tensors at every call; a new prompt is copied into them (fixed addresses, for CUDA graphs)."""
    function = CausalTransformerFunction(model, CausalConfig(chunk_frames=1, sink_chunks=1, window_chunks=2,
                                                             cache_after="last_step"), text_tokens=TEXT).eval()
    seen = count_text_projections(function)
    cache = CausalWanTransformer(model, function.config).new_cache(BATCH, LATENT, LATENT)
    one, two = texts(2, seed=15)
    ids, values = [], []
    with torch.no_grad():
        for text, chunk in zip([one, one, one, two], chunks(4)):
            inputs = function.inputs_for(chunk, torch.full((BATCH,), 500.0, dtype=F64), text, cache)
            text_kv = [t for name, t in inputs.items() if name.startswith("text_")]
            ids.append([id(t) for t in text_kv])
            values.append([t.clone() for t in text_kv])
            function.stage_outputs(cache, function(*inputs.ordered(function.input_names)))
            cache.commit()
    assert ids[0] == ids[1] == ids[2] == ids[3]
    assert not any(torch.equal(a, b) for a, b in zip(values[2], values[3]))
    assert seen == Counter({"text_embedder": 2, **{name: 2 for name in function.text_layers}})


@pytest.mark.parametrize("image", [dict(added_kv_proj_dim=8, image_dim=8), dict(added_kv_proj_dim=8)])
def test_wan_image_to_video_layout_is_refused(image):
    """Wan I2V: an image embedder and add_k_proj in every cross-attention layer (and add_k_proj alone)."""
    from diffusers import WanTransformer3DModel

    i2v = WanTransformer3DModel(**{**TINY_WAN_CAUSAL, **image})
    with pytest.raises(ConfigError, match="image-to-video layout"):
        CausalWanTransformer(i2v, CONFIG)
    with pytest.raises(ConfigError, match="image-to-video layout"):
        CausalTransformerFunction(i2v, CONFIG, text_tokens=TEXT)
