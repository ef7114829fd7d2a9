"""Stream batch equals sequential denoising; residual CFG follows its formulas.

The reference here is written from the maths, independently of `pipelines.stream`: each frame is
noised to the first stage, then denoised stage by stage with the same per-stage noise. The same
holds with SDXL's added conditioning (a pooled text vector per prompt, laid out per row like the
text embeddings).
"""
from __future__ import annotations

import pytest
import torch
from diffusers import LCMScheduler

from livediff.pipelines.prompts import SDXL_ADDED, Conditioning
from livediff.pipelines.schedule import StageSchedule, lcm_timestep_table
from livediff.network_outputs import NetworkOutputs
from livediff.pipelines.batching import run_alone
from livediff.pipelines.stream import Guidance, StreamBatch, unet_calls

LATENT = (4, 6, 5)
TOKENS, DIM, POOLED = 3, 8, 5


class FakeDenoiser:
    """A deterministic, nonlinear stand-in for the UNet that depends on latent, timestep, text and (when
    given) the pooled added conditioning (and size ids) per row."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.weight = torch.randn(LATENT[0], LATENT[0], generator=g, dtype=torch.float64) * 0.5
        self.calls = []

    def __call__(self, sample, timesteps, text, *added):
        self.calls.append(sample.shape[0])
        mixed = torch.einsum("oc,bchw->bohw", self.weight, sample)
        t = timesteps.float().view(-1, 1, 1, 1) / 1000
        bias = text.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        for pooled in added:
            bias = bias + torch.sin(3 * pooled).sum(dim=1).view(-1, 1, 1, 1)
        return torch.tanh(mixed * (1 + t) + bias) + 0.1 * sample


def step(stream: StreamBatch, x0: torch.Tensor, unet, guidance: Guidance) -> torch.Tensor:
    """One call of the stream with `unet` (a plain function) as its runner: F latents in, F finished out."""
    def runner(inputs):
        added = [inputs[name] for name in SDXL_ADDED if name in inputs]
        return NetworkOutputs({"noise_pred": unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                                                  *added)})

    return run_alone(stream.calls(x0, unet_calls(runner), guidance))


def coefficients(t_index_list):
    scheduler = LCMScheduler()
    table = lcm_timestep_table(scheduler)
    out = []
    for i in t_index_list:
        t = table[i]
        a = scheduler.alphas_cumprod[t].double()
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(t)
        out.append(dict(t=t, alpha=float(a.sqrt()), beta=float((1 - a).sqrt()), c_skip=float(c_skip),
                        c_out=float(c_out)))
    return out


def boundary_step(eps, x, c):
    return c["c_out"] * (x - c["beta"] * eps) / c["alpha"] + c["c_skip"] * x


def reference_frames(x0, noise, t_index_list, unet, g: Guidance):
    """Sequential denoising of F frames (x0: F rows); noise: (n*F) rows ordered by stage."""
    coeffs = coefficients(t_index_list)
    f = x0.shape[0]
    cond = [c.expand(f, *c.shape[1:]) for c in g.cond.inputs.values()]  # the text first, then SDXL's added
    uncond = [u.expand(f, *u.shape[1:]) for u in g.uncond.inputs.values()]
    x = coeffs[0]["alpha"] * x0 + coeffs[0]["beta"] * noise[:f]
    stock = noise[:f].clone()
    guided_on = g.guidance_scale > 1 and g.cfg_type != "none"
    for i, c in enumerate(coeffs):
        t = torch.full((f,), c["t"])
        eps_c = unet(x, t, *cond)
        if not guided_on:
            eps = eps_c
        elif g.cfg_type == "full":
            eps_u = unet(x, t, *uncond)
            eps = eps_u + g.guidance_scale * (eps_c - eps_u)
        else:
            if g.cfg_type == "initialize" and i == 0:
                stock = unet(x, t, *uncond)
            negative = g.delta * stock
            eps = negative + g.guidance_scale * (eps_c - negative)
        denoised = boundary_step(eps, x, c)
        if i + 1 < len(coeffs):
            nxt = coeffs[i + 1]
            next_noise = noise[(i + 1) * f:(i + 2) * f]
            stock = next_noise + nxt["alpha"] / nxt["beta"] * boundary_step(eps, c["beta"] * stock, c)
            x = nxt["alpha"] * denoised + nxt["beta"] * next_noise
    return denoised


def make_stream(t_index_list, frames):
    schedule = StageSchedule.build(LCMScheduler(), t_index_list, frames, "cpu", torch.float64)
    return StreamBatch(schedule, LATENT, torch.Generator().manual_seed(3), "cpu", torch.float64)


def make_guidance(cfg_type, scale=2.0, delta=0.7, added=False):
    g = torch.Generator().manual_seed(5)

    def conditioning():
        text = torch.randn(1, TOKENS, DIM, generator=g, dtype=torch.float64)
        sdxl = (torch.randn(1, POOLED, generator=g, dtype=torch.float64), torch.randn(1, 6, generator=g, dtype=torch.float64))
        return Conditioning(text, sdxl if added else (),
                            text_input=True)  # the fake denoiser reads the embeddings

    return Guidance(cond=conditioning(), uncond=conditioning(), cfg_type=cfg_type, guidance_scale=scale, delta=delta)


T_INDEX = {1: [30], 2: [20, 40], 3: [10, 25, 45], 4: [18, 26, 35, 45]}


def run_stream_and_reference(n, f, cfg_type, calls=6, added=False):
    stream, unet, guidance = make_stream(T_INDEX[n], f), FakeDenoiser(), make_guidance(cfg_type, added=added)
    batches = torch.randn(calls, f, *LATENT, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    outputs = [step(stream, batch, unet, guidance) for batch in batches]
    for k, out in enumerate(outputs):
        # call k finishes the frames that entered n-1 calls earlier; the first calls repeat the warmed-up batch
        source = batches[max(0, k - (n - 1))]
        expected = reference_frames(source, stream.noise, T_INDEX[n], FakeDenoiser(), guidance)
        torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    return unet


@pytest.mark.parametrize("n,f", [(1, 1), (2, 1), (4, 1), (2, 2), (3, 2)])
def test_stream_batch_equals_sequential(n, f):
    unet = run_stream_and_reference(n, f, "none")
    # one denoiser call per frame batch after warm-up, each carrying every in-flight row
    assert unet.calls[-1] == n * f


@pytest.mark.parametrize("cfg_type", ["self", "initialize", "full"])
@pytest.mark.parametrize("n,f", [(1, 1), (3, 1), (2, 2)])
def test_guided_stream_matches_formulas(cfg_type, n, f):
    unet = run_stream_and_reference(n, f, cfg_type)
    extra = {"self": 0, "initialize": f, "full": n * f}[cfg_type]
    assert unet.calls[-1] == n * f + extra


@pytest.mark.parametrize("cfg_type", ["none", "self", "initialize", "full"])
@pytest.mark.parametrize("n,f", [(3, 1), (2, 2)])
def test_added_conditioning_is_laid_out_per_row_like_the_text(cfg_type, n, f):
    unet = run_stream_and_reference(n, f, cfg_type, added=True)
    assert unet.calls[-1] == n * f + {"none": 0, "self": 0, "initialize": f, "full": n * f}[cfg_type]


def test_added_conditioning_changes_the_prediction():
    """Guard for the test above: the fake denoiser really reads the pooled rows."""
    x = torch.randn(1, *LATENT, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    outputs = [step(make_stream(T_INDEX[2], 1), x, FakeDenoiser(), make_guidance("full", added=added))
               for added in (False, True)]
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3


def test_warm_up_uses_single_stage_calls():
    stream, unet = make_stream(T_INDEX[3], 2), FakeDenoiser()
    step(stream, torch.zeros(2, *LATENT, dtype=torch.float64), unet, make_guidance("initialize"))
    # two warm-up stages (the first with the real negative rows) then the full stream call
    assert unet.calls == [4, 2, 2 * 3 + 2]


def test_guidance_scale_at_most_one_disables_guidance():
    plain = run_outputs("none", scale=2.0)
    for cfg_type in ("full", "self", "initialize"):
        torch.testing.assert_close(run_outputs(cfg_type, scale=1.0), plain)
    assert not torch.allclose(run_outputs("self", scale=2.0), plain)


def run_outputs(cfg_type, scale):
    stream, unet = make_stream(T_INDEX[2], 1), FakeDenoiser()
    x = torch.randn(3, 1, *LATENT, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return torch.stack([step(stream, b, unet, make_guidance(cfg_type, scale=scale)) for b in x])


def test_reset_restarts_from_a_fresh_state():
    stream, unet, g = make_stream(T_INDEX[3], 1), FakeDenoiser(), make_guidance("self")
    frames = torch.randn(4, 1, *LATENT, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    first = [step(stream, b, unet, g) for b in frames]
    stream.reset()
    again = [step(stream, b, unet, g) for b in frames]
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b)
