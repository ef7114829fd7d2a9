"""The ControlNet preprocessor registry (`pipelines.control_registry`): every preprocessor is one
module of `pipelines/preprocessors/`; what each declares is honest (a `device` preprocessor makes its
control images without reading anything back, every one gives (F,3,H,W) in [0,1]); validation, the
control images, network loading, the CLI and the UI read it, so a preprocessor registered here and
nowhere else is usable everywhere (docs/extending.md); the old messages are unchanged; and finding
the preprocessors loads neither torch nor OpenCV."""
from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from livediff.errors import ConfigError
from livediff.pipelines import control_registry as registry
from livediff.pipelines.control import ControlImages, ControlNetSpec
from livediff.pipelines.control_registry import PreprocessorSpec
from livediff.pipelines.frames import host_frames

SHIPPED = ("canny", "tile", "identity", "none", "depth", "pose")
SIZE = 64


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, in a copy this test may add to."""
    registry.specs()
    monkeypatch.setattr(registry._registry, "by_name", dict(registry._registry.by_name))
    return registry


def frames(n: int = 2, device: str = "cpu") -> torch.Tensor:
    return (torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)


def pixel_arrays(n: int = 2):
    """HxWx3 uint8 frames with a bright square (edges for canny)."""
    for i in range(n):
        array = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
        array[8 + i:40, 16:48] = 200
        yield array


def test_every_preprocessor_module_registers_one_preprocessor_in_order():
    from livediff.pipelines import preprocessors

    names = registry.names()
    modules = [m.name for m in pkgutil.iter_modules(preprocessors.__path__)]
    declared = {sys.modules[f"{registry.PREPROCESSORS_PACKAGE}.{name}"].SPEC.name for name in modules}
    assert declared == set(names) and len(modules) == len(names)
    assert [name for name in names if name in SHIPPED] == list(SHIPPED)  # new ones come after, by `order`
    assert registry.DEFAULT in names and ControlNetSpec("random").preprocessor == registry.DEFAULT


def test_declarations_are_well_formed():
    spec_fields = {f.name for f in fields(ControlNetSpec)}
    for spec in registry.specs():
        assert set(spec.options) <= spec_fields and spec.summary, spec.name
        assert (spec.network is None) == (spec.load_network is None) == ("preprocessor_model" not in spec.options)
    with pytest.raises(ValueError, match="runs_on"):
        PreprocessorSpec(name="x", summary="x", runs_on="gpu", run=lambda images, **_: images)


@pytest.mark.parametrize("name", registry.names())
def test_every_preprocessor_makes_control_images_where_it_says(name):
    """(F,3,H,W) in [0,1] from a call's frames, through both parts (`on_host`, then the device part);
    a network-free `device` preprocessor also runs on `meta` tensors, which refuse every read back to
    the host, and a `pixels` one does all its work on the host: its device part runs on `meta`."""
    pre = registry.get(name)
    spec = ControlNetSpec("random", preprocessor=name,
                          preprocessor_model="random" if pre.network is not None else None)
    network = pre.load_network("random", 0).eval() if pre.load_network is not None else None
    control = ControlImages((spec,), (network,))
    pixels = host_frames(list(pixel_arrays()), SIZE, SIZE, 2)
    given = host_frames(torch.rand(2, 3, SIZE, SIZE), SIZE, SIZE, 2)
    host = control.on_host(pixels, given)
    out = control(pixels.to_model(torch.device("cpu"), torch.float32), host)[0]
    assert out.shape == (2, 3, SIZE, SIZE) and out.dtype == torch.float32
    assert 0 <= out.min().item() and out.max().item() <= 1
    assert (host.made[0] is not None) == (pre.runs_on == "pixels")
    if pre.runs_on == "caller":
        assert torch.allclose(out, given.pixels)
    if pre.runs_on == "pixels":
        made = host.made[0]
        assert made is not None and made.device.type == "cpu" and made.dtype == torch.uint8 and made.shape[1] in (1, 3)
        on_meta = control(pixels.to_model(torch.device("meta"), torch.float16), host)[0]
        assert on_meta.device.type == "meta" and on_meta.shape == (2, 3, SIZE, SIZE)
    if pre.runs_on == "device" and network is None:
        on_meta = pre.run(frames(device="meta"), spec=spec, network=None, given=None, index=0)
        assert on_meta.device.type == "meta" and on_meta.shape == (2, 3, SIZE, SIZE)


def test_messages_are_the_old_ones():
    from livediff.app.commands.options import controlnet_settings

    with pytest.raises(ConfigError) as caught:
        ControlNetSpec("random", preprocessor="scribble")
    assert str(caught.value) == f"control preprocessor 'scribble' is not one of {', '.join(registry.names())}"
    with pytest.raises(ConfigError) as caught:
        ControlNetSpec("random", preprocessor="depth")
    assert str(caught.value) == ("preprocessor 'depth' needs preprocessor_model (a depth model, e.g. "
                                 "'Intel/dpt-hybrid-midas'; a hub id, a folder or 'random'), not None")
    with pytest.raises(ConfigError) as caught:
        ControlNetSpec("random", preprocessor="tile", preprocessor_model="random")
    with_network = registry.names(with_network=True)  # today depth and pose: then the messages are the old ones
    assert str(caught.value) == f"preprocessor_model is for preprocessors {' and '.join(map(repr, with_network))}, not 'tile'"
    for options, words in ((dict(low_threshold=256), "canny low_threshold 256 must be an integer in 0..255"),
                           (dict(low_threshold=90, high_threshold=80), "canny low_threshold 90 is above high_threshold 80"),
                           (dict(keypoint_threshold=1.5), "pose keypoint_threshold 1.5 is outside [0.0, 1.0]")):
        with pytest.raises(ConfigError) as caught:  # refused whichever preprocessor is chosen, as before
            ControlNetSpec("random", preprocessor="tile", **options)
        assert str(caught.value) == words

    def cli(preprocessors, networks):
        return argparse.Namespace(controlnet=["random"] * len(preprocessors), control_preprocessor=preprocessors,
                                  control_scale=[], preprocessor_model=networks)

    with pytest.raises(ConfigError) as caught:
        controlnet_settings(cli(["depth"], []))
    assert str(caught.value) == ("--control-preprocessor depth needs its network: add a --preprocessor-model "
                                 "(a depth model, e.g. 'Intel/dpt-hybrid-midas')")
    with pytest.raises(ConfigError) as caught:
        controlnet_settings(cli(["pose"], ["random", "random"]))
    either = " or ".join([", ".join(with_network[:-1]), with_network[-1]] if len(with_network) > 1 else with_network)
    assert str(caught.value) == f"--preprocessor-model given 2 time(s) for 1 {either} --control-preprocessor"
    from livediff.pipelines import control

    assert control.PREPROCESSORS == registry.names()
    assert control.MODEL_PREPROCESSORS.items() >= {"depth": "a depth model, e.g. 'Intel/dpt-hybrid-midas'",
                                                   "pose": "a ViTPose model, e.g. 'usyd-community/vitpose-base-simple'"
                                                   }.items()
    assert tuple(control.MODEL_PREPROCESSORS) == with_network


def flip(images, *, spec, network, given, index):
    return (images.flip(-1) + 1) / 2


class Halve(torch.nn.Module):
    def forward(self, images):
        return (images + 1) / 4


def halve(images, *, spec, network, given, index):
    return network(images)


def test_a_preprocessor_registered_in_one_place_is_usable_everywhere(scratch_registry, capsys):
    import gradio as gr

    from livediff.app.cli import main
    from livediff.app.commands.options import controlnet_settings
    from livediff.app.ui.control_preview import scale_sliders
    from livediff.app.ui.settings import LiveSettings
    from livediff.pipelines import StreamConfig, load_pipeline

    registry.register(PreprocessorSpec(name="flip", order=5, summary="the frame mirrored", runs_on="device", run=flip))
    registry.register(PreprocessorSpec(name="halve", order=200, summary="half the frame", runs_on="device", run=halve,
                                       options=("preprocessor_model",), network="a halving module",
                                       load_network=lambda model, seed: Halve()))
    assert registry.names()[0] == "flip" and registry.names()[-1] == "halve"
    assert registry.names(with_network=True)[-1] == "halve"

    with pytest.raises(SystemExit):
        main(["video", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "flip (the frame mirrored, on the device)" in help_text and " or halve preprocessor" in help_text

    parsed = controlnet_settings(argparse.Namespace(controlnet=["random"] * 3, control_preprocessor=["flip", "halve", "depth"],
                                                    control_scale=[], preprocessor_model=["h", "d"]))
    assert parsed == [dict(model="random", preprocessor="flip"),
                      dict(model="random", preprocessor="halve", preprocessor_model="h"),
                      dict(model="random", preprocessor="depth", preprocessor_model="d")]
    with pytest.raises(ConfigError, match="needs preprocessor_model \\(a halving module; "):
        ControlNetSpec("random", preprocessor="halve")

    settings = dict(model="tiny", width=SIZE, height=SIZE, device="cpu", dtype="float32", t_index_list=[32, 45])
    pipe = load_pipeline(**settings, controlnet=[dict(model="random", preprocessor="flip"),
                                                 dict(model="random", preprocessor="halve", preprocessor_model="x")])
    pipe.prepare(prompt="a photo")
    frame = (frames(1)[0] + 1) / 2
    for _ in range(2):
        pipe(frame)
    flipped, halved = (c[-1] for c in pipe.last_control)
    assert torch.allclose(flipped, frame.flip(-1), atol=1e-6) and torch.allclose(halved, frame / 2, atol=1e-6)

    config = StreamConfig(**settings, controlnet=[dict(model="random", preprocessor="flip")])
    with gr.Blocks():
        slider, = scale_sliders(config, LiveSettings(control_scales=(1.0,)))
    assert "the frame mirrored" in str(slider.info)


def test_a_name_is_registered_once(scratch_registry):
    spec = registry.get("tile")
    registry.register(spec)  # the same spec again (a module imported twice): fine
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(replace(spec, run=flip))


def test_finding_the_preprocessors_and_validating_a_spec_loads_no_torch_or_opencv():
    code = ("import sys; from livediff.pipelines import control_registry as r; from livediff.pipelines.control "
            "import ControlNetSpec; ControlNetSpec('random', preprocessor='pose', preprocessor_model='random'); "
            "print(len(r.names()), sorted({'torch', 'cv2', 'numpy', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 1)[1].strip() == "[]", out
