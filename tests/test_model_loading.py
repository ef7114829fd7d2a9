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
