"""The causal pipeline's samplers, and what a seed change, a prompt change and a reset do to the frames
collected for an incomplete chunk (issue 16 gaps, items 1-3).

The oracle of the "renoise" sampler is the recipe written out by hand (Self-Forcing / CausVid /
StreamDiffusionV2: x₀ = x − σ·v, then x' = (1 − σ')·x₀ + σ'·ε' with fresh noise) over the separately
tested `CausalWanTransformer` and its cache, with the noise drawn from a generator seeded like the
stream's (float64, 1e-9).
"""
from __future__ import annotations

import pytest
import torch

from livediff.errors import ConfigError
from livediff.pipelines.causal.config import CausalConfig
from livediff.pipelines.causal.transformer import CausalWanTransformer
from test_causal_pipeline import OPTIONS, T_INDEX, build, flow_table, frames, run, text_of

TOL = 1e-9
F64 = torch.float64
STAGES = [10, 25, 40]  # three stages: two re-noisings per chunk
CHUNKS = 3  # with one sink and a window of one, the cache slides on the third


def latents_of(pipe, seed: int = 0) -> list[torch.Tensor]:
    """Clean normalised latents of CHUNKS chunks (the VAE is not what is tested here)."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, pipe.models.vae.config.z_dim, OPTIONS["chunk_frames"], *pipe.latent_hw)
    return [torch.randn(shape, generator=g, dtype=F64) for _ in range(CHUNKS)]


def denoised(pipe, latents: list[torch.Tensor]) -> list[torch.Tensor]:
    return [pipe.denoise(chunk) for chunk in latents]


def pipeline(sampler: str, t_index_list=STAGES, seed: int = 7, prompt: str = "claymation"):
    pipe = build(t_index_list=t_index_list, seed=seed, causal=dict(OPTIONS, sampler=sampler))
    pipe.prepare(prompt=prompt)
    return pipe


@torch.no_grad()
def renoise_by_hand(pipe, latents: list[torch.Tensor], seed: int = 7) -> list[torch.Tensor]:
    causal = CausalWanTransformer(pipe.models.transformer, CausalConfig(**OPTIONS))
    cache, text = causal.new_cache(1, *pipe.latent_hw), text_of(pipe, "claymation")
    table = flow_table()
    sigmas = [float(table.sigmas[i]) for i in STAGES]
    timesteps = [float(table.timesteps[i]) for i in STAGES]
    noise = torch.Generator().manual_seed(seed)
    outs = []
    for clean in latents:
        x = (1 - sigmas[0]) * clean + sigmas[0] * torch.randn(clean.shape, generator=noise, dtype=F64)
        for s, t in enumerate(timesteps):
            x0 = x - sigmas[s] * causal(x, t, text, cache)
            if s + 1 < len(sigmas):
                x = (1 - sigmas[s + 1]) * x0 + sigmas[s + 1] * torch.randn(clean.shape, generator=noise, dtype=F64)
            else:
                x = x0
        causal.finish_chunk(cache, clean=x, text=text)
        outs.append(x)
    return outs


def same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = TOL) -> bool:
    return len(a) == len(b) and max((x - y).abs().max().item() for x, y in zip(a, b)) <= tol


# --- item 1: the renoise sampler -----------------------------------------------------------------

def test_renoise_is_the_default_and_equals_the_recipe_by_hand():
    pipe = build(t_index_list=STAGES, causal=OPTIONS)
    assert pipe.options.sampler == "renoise"
    pipe.prepare(prompt="claymation")
    latents = latents_of(pipe)
    ours = denoised(pipe, latents)
    assert same(ours, renoise_by_hand(pipe, latents))
    # it is another sampler than Euler: same model, noise and latents, other output
    assert not same(ours, denoised(pipeline("euler"), latents), tol=1e-3)


def test_with_one_stage_both_samplers_are_the_same_computation():
    """One stage: Euler's x + (0 − σ)·v is x − σ·v, and renoise re-noises nothing after the last stage, so
    both return x₀ bit for bit and draw the same noise: whole streams agree, chunk after chunk."""
    euler, renoise = pipeline("euler", [30]), pipeline("renoise", [30])
    clip = frames(13)
    ours, theirs = run(euler, clip), run(renoise, clip)
    assert len(ours) == len(theirs) == 13 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert torch.equal(euler._noise.get_state(), renoise._noise.get_state())


@pytest.mark.parametrize("sampler", ["renoise", "euler"])
def test_the_seed_decides_the_output_and_reproduces_it(sampler):
    latents = latents_of(pipeline(sampler))
    first = denoised(pipeline(sampler), latents)
    assert same(first, denoised(pipeline(sampler), latents), tol=0.0)
    assert not same(first, denoised(pipeline(sampler, seed=8), latents), tol=1e-3)


@pytest.mark.parametrize("sampler, words", [
    ("ddim", "causal sampler 'ddim' must be one of renoise, euler"),
    (None, "causal sampler None must be one of renoise, euler"),
])
def test_a_bad_sampler_is_named_before_any_weights_load(sampler, words, monkeypatch):
    from livediff.pipelines.causal import models as module

    monkeypatch.setattr(module, "load_causal_models", lambda *a: pytest.fail("weights loaded"))
    with pytest.raises(ConfigError, match=words):
        build(causal=dict(sampler=sampler))


def test_the_cli_passes_the_sampler_to_the_causal_options():
    import argparse

    from livediff.app.commands.options import add_causal_options, causal_settings

    parser = argparse.ArgumentParser()
    add_causal_options(parser)
    assert causal_settings(parser.parse_args(["--sampler", "euler"]), "causal-video") == {
        "causal": {"sampler": "euler"}}
    assert causal_settings(parser.parse_args([]), "causal-video") == {"causal": {}}
    with pytest.raises(ConfigError, match="--sampler is a --mode causal-video option"):
        causal_settings(parser.parse_args(["--sampler", "euler"]), "video")


# --- item 2: the frames of an incomplete chunk ------------------------------------------------------

def test_a_seed_change_mid_chunk_keeps_the_stream_and_every_frame():
    """8 frames (chunk 0 of 5 done, 3 of chunk 1 collected), set_seed, 13 more: all 21 come out, and they
    are the frames of the same stream with the seed changed at the chunk boundary (nothing collected was
    dropped or restarted); the chunks before the change are the old seed's, the later ones differ."""
    clip = frames(21)
    changed = pipeline("renoise", T_INDEX)
    outs = run(changed, clip[:8])
    changed.set_seed(9)
    assert changed.settings.seed == 9 and changed.cache.chunks == 1 and changed.encoder.frames == 5
    assert changed.latency_frames == 5  # the 3 collected frames still count
    outs += run(changed, clip[8:])

    at_boundary = pipeline("renoise", T_INDEX)
    expected = run(at_boundary, clip[:5])
    at_boundary.set_seed(9)
    expected += run(at_boundary, clip[5:])
    assert len(outs) == 21 and same(outs, expected, tol=0.0)

    unchanged = run(pipeline("renoise", T_INDEX), clip)
    assert same(outs[:5], unchanged[:5], tol=0.0) and not same(outs[5:], unchanged[5:], tol=1e-3)


def test_a_seed_change_is_a_reseed_a_reset_then_replays_the_new_seed():
    pipe = pipeline("renoise", T_INDEX)
    clip = frames(13)
    run(pipe, clip[:3])
    pipe.set_seed(9)
    pipe.reset()
    assert same(run(pipe, clip), run(pipeline("renoise", T_INDEX, seed=9), clip), tol=0.0)


def test_a_prompt_change_mid_chunk_keeps_every_frame():
    """(Its content is checked against a hand-run in test_causal_pipeline: re-anchoring.)"""
    pipe = pipeline("renoise", T_INDEX)
    clip = frames(21)
    outs = run(pipe, clip[:8])
    pipe.update_prompt("watercolour")
    assert pipe.latency_frames == 5
    outs += run(pipe, clip[8:])
    assert len(outs) == 21
    assert not same(outs[5:], run(pipeline("renoise", T_INDEX), clip)[5:], tol=1e-3)  # the prompt did change


def test_reset_drops_the_collected_frames_and_says_how_many():
    pipe = pipeline("renoise", T_INDEX)
    clip = frames(8)
    first = run(pipe, clip)  # chunk 0 done, 3 collected
    assert len(first) == 5
    assert pipe.reset() == 3
    assert pipe.reset() == 0 and pipe.latency_frames == 5 and pipe.cache.chunks == 0
    assert same(run(pipe, clip[:5]), first, tol=0.0)  # a fresh stream of the same seed
    # flush() is the way to keep them: it finishes them, and the reset it ends with drops nothing
    run(pipe, clip[5:])
    assert len(pipe.flush()) == 3


# --- item 3: sessions share the weights ---------------------------------------------------------------

def test_two_ui_sessions_share_the_transformer_parameters():
    from livediff.app.ui.engine import Engine
    from livediff.app.ui.sessions import SessionRegistry
    from livediff.app.ui.settings import LiveSettings

    engine = Engine(dict(model="tiny-wan-causal", width=64, height=64, device="cpu", dtype="float32",
                         t_index_list=[32, 45]), stream_mode="causal-video")
    registry = SessionRegistry(engine)
    try:
        a, _ = registry.get("a").pipeline("webcam", LiveSettings(prompt="claymation"))
        b, _ = registry.get("b").pipeline("webcam", LiveSettings(prompt="watercolour"))
    finally:
        registry.shutdown()
    assert a is not b and a.cache is not b.cache and a.models is b.models  # one transformer, VAE, text encoder
    transformer = a.models.transformer
    shared = [*transformer.parameters(), *transformer.buffers()]
    for pipe in (a, b):  # the module each session actually runs: a copy of the structure, the same tensors
        assert all(p is q for p, q in zip([*pipe.causal.model.parameters(), *pipe.causal.model.buffers()], shared,
                                          strict=True))
    assert a.causal.model is not b.causal.model  # each has its own processors (its own cache slot)
