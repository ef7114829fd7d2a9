"""Every public entry point of the Python API refuses a bad value with livediff's own error and one
sentence naming the value and what is allowed (issue 32 item 11): no raw TypeError/IndexError from
deep inside, and no bad value silently accepted.

Settings and accelerator options are given to `load_pipeline` with a model that was never
downloaded, so each row also proves the value is refused before any weights load (a value that got
through would end in ModelNotAvailableError instead). Live calls run on one tiny image pipeline with
a random IP-Adapter and one tiny causal video pipeline, built once for the module.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from livediff import load_pipeline
from livediff.errors import ConfigError, InputError

SIZE = 64
NEVER_DOWNLOADED = dict(model="someone/never-downloaded", t_index_list=(20, 40), width=SIZE, height=SIZE,
                        device="cpu", dtype="float32")
RANDOM_ADAPTER = dict(model="random", image_encoder="random")


def settings(**bad):
    return lambda api: load_pipeline(**{**NEVER_DOWNLOADED, **bad})


def options(**bad):
    return lambda api: load_pipeline(**NEVER_DOWNLOADED, accelerator_options=bad)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    image = load_pipeline(model="tiny", t_index_list=(20, 40), width=SIZE, height=SIZE, device="cpu",
                          dtype="float32", ip_adapter=RANDOM_ADAPTER)
    image.prepare(prompt="oil painting")
    causal = load_pipeline(model="tiny-wan-causal", mode="causal-video", width=SIZE, height=SIZE, device="cpu",
                           dtype="float32", t_index_list=[20, 40],
                           causal=dict(chunk_frames=2, sink_chunks=1, window_chunks=1))
    causal.prepare(prompt="oil painting")
    not_weights = tmp_path_factory.mktemp("adapter") / "ip-adapter.bin"
    not_weights.write_text("root:x:0:0:root:/root:/bin/bash\n")
    return SimpleNamespace(image=image, causal=causal, not_weights=not_weights)


BAD_VALUES = {
    # --- load_pipeline / StreamConfig -----------------------------------------------------------
    "bank seed 2**70": (settings(mode="video", bank={"seed": 2 ** 70}), ConfigError,
                        r"bank seed 1180591620717411303424 must be an integer in 0\.\.9223372036854775807"),
    "bank seed -1": (settings(mode="video", bank={"seed": -1}), ConfigError, r"bank seed -1 must be an integer in 0"),
    "ip_adapter without an encoder": (settings(ip_adapter={"model": "random"}), ConfigError,
                                      r"ip_adapter needs image_encoder \(given: 'model'\)"),
    "ip_adapter without anything": (settings(ip_adapter={}), ConfigError,
                                    r"ip_adapter needs model, image_encoder \(given: nothing\)"),
    "ip_adapter model /etc/passwd": (settings(ip_adapter={"model": "/etc/passwd", "image_encoder": "random"}),
                                     ConfigError, r"ip_adapter model '/etc/passwd' is not an IP-Adapter weight file; "
                                                  r"use a \.safetensors/\.bin file"),
    "ip_adapter weights not a file of weights": (
        lambda api: load_pipeline(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32",
                                  ip_adapter={"model": str(api.not_weights), "image_encoder": "random"}),
        ConfigError, r"ip-adapter\.bin cannot be read as an IP-Adapter weight file \("),
    "controlnet without a model": (settings(controlnet={"scale": 0.5}), ConfigError, r"controlnet needs model"),
    "dtype []": (settings(dtype=[]), ConfigError, r"dtype \[\] is not one of auto, float32, float16, bfloat16"),
    "dtype int8": (settings(dtype="int8"), ConfigError, r"dtype 'int8' is not one of auto, float32"),
    "device meta:0": (settings(device="meta:0"), ConfigError, r"device 'meta:0': the meta device has no index; use 'meta'"),
    # --- accelerator_options (AcceleratorOptions) --------------------------------------------------
    "openvino_device 5": (options(openvino_device=5), ConfigError, r"openvino_device 5 is not one of CPU, GPU, NPU"),
    "workspace_gb big": (options(workspace_gb="big"), ConfigError,
                         r"workspace_gb 'big' must be None or a positive number of GiB"),
    "workspace_gb inf": (options(workspace_gb=float("inf")), ConfigError, r"workspace_gb inf must be None or a"),
    "workspace_gb nan": (options(workspace_gb=float("nan")), ConfigError, r"workspace_gb nan must be None or a"),
    "cache_dir 123": (options(cache_dir=123), ConfigError, r"cache_dir 123 must be a folder path"),
    "cache_dir ''": (options(cache_dir=""), ConfigError, r"cache_dir '' must be a folder path"),
    "build 'no'": (options(build="no"), ConfigError, r"build 'no' must be True \(build missing engines\) or False"),
    "cuda_graphs 'yes'": (options(cuda_graphs="yes"), ConfigError, r"cuda_graphs 'yes' must be True, False or None"),
    "opset True": (options(opset=True), ConfigError, r"opset True is outside 17\.\.23"),
    "compile_mode []": (options(compile_mode=[]), ConfigError, r"compile_mode \[\] is not one of default"),
    "weights 8": (options(weights=8), ConfigError, r"weights 8 is not None or 'int8'"),
    # --- set_style_image ---------------------------------------------------------------------------
    "style image 0x0 array": (lambda api: api.image.set_style_image(np.zeros((0, 0, 3), np.uint8)), InputError,
                              r"the style image array of shape \(0, 0, 3\) is empty"),
    "style image 0x0 picture": (lambda api: api.image.set_style_image(Image.new("RGB", (0, 0))), InputError,
                                r"the style image is 0x0 pixels; it must have at least one"),
    "style image NaN tensor": (lambda api: api.image.set_style_image(torch.full((3, 8, 8), float("nan"))), InputError,
                               r"the style image tensor holds NaN or infinite values; it must be in \[0,1\]"),
    "style image infinite array": (lambda api: api.image.set_style_image(np.full((8, 8, 3), np.inf)), InputError,
                                   r"the style image array holds NaN or infinite values"),
    "style image URL": (lambda api: api.image.set_style_image("http://127.0.0.1:9/style.png"), InputError,
                        r"style image 'http://127\.0\.0\.1:9/style\.png' is a URL; livediff reads local files and "
                        r"pictures only"),
    "style image missing file": (lambda api: api.image.set_style_image("/no/such/style.png"), InputError,
                                 r"cannot read style image '/no/such/style\.png': \[Errno 2\]"),
    "style image 5": (lambda api: api.image.set_style_image(5), InputError,
                      r"a style image must be a PIL image, an array, a tensor in \[0,1\] or a local file path, not int"),
    # --- new_session ---------------------------------------------------------------------------------
    "new_session mode video": (lambda api: api.image.new_session(mode="video"), ConfigError,
                               r"new_session mode 'video': a session keeps its pipeline's kind of stream \('img2img'"),
    # --- the causal pipeline's live setters -------------------------------------------------------------
    "causal guidance_scale 3": (lambda api: api.causal.set_guidance(guidance_scale=3.0), ConfigError,
                                r"guidance_scale 3\.0: mode 'causal-video' runs distilled causal models without "
                                r"classifier-free guidance; use 1 or below"),
    "causal cfg_type full": (lambda api: api.causal.set_guidance(cfg_type="full"), ConfigError,
                             r"cfg_type 'full': mode 'causal-video' runs distilled causal models without"),
    "causal cfg_type bogus": (lambda api: api.causal.set_guidance(cfg_type="bogus"), ConfigError,
                              r"cfg_type 'bogus' is not one of none, full, self, initialize"),
    "causal delta as text": (lambda api: api.causal.set_guidance(delta="a"), ConfigError, r"delta 'a' must be a number"),
}


@pytest.mark.parametrize("name", BAD_VALUES)
def test_a_bad_value_is_a_named_livediff_error(api, name):
    call, error, message = BAD_VALUES[name]
    with pytest.raises(error, match=message):
        call(api)


def test_the_causal_pipeline_takes_guidance_that_means_none_and_runs_on(api):
    """What the UI sends every mode alike: refusing it would break the causal tab."""
    api.causal.set_guidance(guidance_scale=1.0, delta=1.0, cfg_type="none")
    assert api.causal.settings.cfg_type == "none"


def test_a_style_image_file_is_read(api, tmp_path):
    path = tmp_path / "style.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path)
    api.image.set_style_image(str(path))
    from_file = [t.clone() for t in api.image.guidance.cond.image.values()]
    api.image.set_style_image(Image.open(path))
    assert all(torch.equal(a, b) for a, b in zip(from_file, api.image.guidance.cond.image.values(), strict=True))
