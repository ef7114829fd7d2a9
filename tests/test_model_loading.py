"""Where weights come from when they are not presets: what a user without a connection is told."""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest

from livediff.errors import ModelNotAvailableError
from livediff.pipelines.models import download_command, load_models


def test_an_uncached_model_without_a_connection_is_one_sentence_naming_the_installed_download_command(caplog):
    """No "fetching … GB" line before the error, and the command named exists in this environment."""
    caplog.set_level(logging.INFO)
    with pytest.raises(ModelNotAvailableError) as caught:
        load_models("someone/missing-model", device="cpu", dtype="float32")
    message = str(caught.value)
    assert message.count(". ") == 0 and "someone/missing-model" in message
    command = message.split("`")[1].split()[0]
    assert shutil.which(command, path=str(Path(sys.executable).parent)) or shutil.which(command), command
    assert "fetching" not in caplog.text


def test_download_command_follows_the_installed_huggingface_hub(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.30.2")
    assert download_command("a/b") == "huggingface-cli download a/b"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "1.2.0")
    assert download_command("a/b") == "hf download a/b"


def test_preset_schedulers_are_current_so_diffusers_prints_no_config_warning():
    """A diffusers pipeline over a preset's networks must not dump a deprecated-config warning
    (with the whole scheduler JSON) into the user's or the test's output."""
    import warnings

    from diffusers import StableDiffusionImg2ImgPipeline

    models = load_models("tiny", device="cpu", dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StableDiffusionImg2ImgPipeline(vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer,
                                       unet=models.unet, scheduler=models.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("preset,pipeline_class", [("tiny", "StableDiffusionPipeline"),
                                                   ("tiny-sdxl", "StableDiffusionXLPipeline")])
def test_a_lora_is_fused_into_the_unet_at_load(preset, pipeline_class, tmp_path):
    """LCM-LoRA's path (SD and SDXL): a folder model plus a LoRA file; the UNet comes back with
    W + scale·B·A in its weights and no adapter layers left (zero per-frame cost)."""
    import diffusers
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    cls = getattr(diffusers, pipeline_class)
    models = load_models(preset, device="cpu", dtype="float32")
    parts = dict(vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=models.unet,
                 scheduler=models.scheduler)
    if models.text_encoder_2 is not None:
        parts.update(text_encoder_2=models.text_encoder_2, tokenizer_2=models.tokenizer_2, add_watermarker=False)
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    cls(**parts).save_pretrained(tmp_path / "model")

    adapted = load_models(preset, device="cpu", dtype="float32").unet
    torch.manual_seed(0)
    adapted.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                   init_lora_weights=False))
    cls.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(adapted))
    name = next(n for n, _ in adapted.named_modules() if n.endswith("attn1.to_q"))
    layer = adapted.get_submodule(name)
    delta = layer.lora_B["default"].weight @ layer.lora_A["default"].weight

    fused = load_models(str(tmp_path / "model"), loras=(f"{tmp_path / 'lora'}:0.5",), device="cpu", dtype="float32")
    base = models.unet.get_submodule(name).weight
    torch.testing.assert_close(fused.unet.get_submodule(name).weight, base + 0.5 * delta)
    assert not any("lora" in n for n, _ in fused.unet.named_modules())


def test_weights_reach_the_device_already_cast_so_the_load_peaks_at_its_float16_size():
    """Issue 26, defect 6: SDXL in float16 on `meta` (the device stand-in, `DeviceTraffic`). Every
    weight arrives cast; only SDXL's own VAE (float32 by design, `vae_needs_float32`) arrives float32,
    and the device never holds more than the loaded networks (moving first, then casting, peaked at the
    float32 size)."""
    import torch

    from benchmarks.device_traffic import DeviceTraffic

    with DeviceTraffic("meta") as traffic:
        bundle = load_models("tiny-sdxl", device="meta", dtype="float16")
    vae_bytes = sum(t.nbytes for t in (*bundle.vae.parameters(), *bundle.vae.buffers()))
    assert bundle.text_encoder_2 is not None
    nets = (bundle.unet, bundle.vae, bundle.text_encoder, bundle.text_encoder_2)
    loaded = sum(t.nbytes for net in nets for t in (*net.parameters(), *net.buffers()))
    float32_copied = sum(c.nbytes for c in traffic.copies if c.dtype == torch.float32)
    assert bundle.vae.dtype == torch.float32 and float32_copied == vae_bytes
    assert {c.dtype for c in traffic.copies if c.dtype.is_floating_point} == {torch.float16, torch.float32}
    assert traffic.peak == traffic.live == loaded
