"""The backend registry (`accelerators.registry`): every backend is one module of
`accelerators/backends/`; what each declares (precisions per device, options, refusals) agrees with
what `check_accelerator` does; the public API, the CLI, `livediff doctor`, `build-engines`, the UI's
batch limit and the causal pipeline read it, so a backend registered here and nowhere else is usable
everywhere (docs/extending.md); and finding the backends loads no torch."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from dataclasses import fields, replace

import pytest
import torch

import livediff.accelerators as accelerators
from livediff.accelerators import AcceleratorOptions, BuildTarget, RowRange, check_accelerator, make_backend, registry
from livediff.accelerators.registry import DEVICE_TYPES, DTYPES, BackendSpec
from livediff.errors import AcceleratorError, ConfigError

SHIPPED = ("eager", "compile", "onnxruntime", "tensorrt", "openvino")


def target(device: str = "cpu", dtype: torch.dtype = torch.float32) -> BuildTarget:
    return BuildTarget(device=torch.device(device), dtype=dtype, height=64, width=64,
                       stream_rows=RowRange(1, 1, 1), frame_rows=1, model="tiny")


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as it is, in a copy this test may add to."""
    registry.specs()
    monkeypatch.setattr(registry._registry, "by_name", dict(registry._registry.by_name))
    return registry


def test_every_backend_module_registers_one_backend_in_order():
    from livediff.accelerators import backends

    modules = sorted(m.name for m in pkgutil.iter_modules(backends.__path__))
    names = registry.names()
    assert accelerators.ACCELERATORS == names
    assert [name for name in names if name in SHIPPED] == list(SHIPPED)  # new ones take their place by `order`
    declared = {sys.modules[f"{registry.BACKENDS_PACKAGE}.{name}"].SPEC.name for name in modules}
    assert declared == set(names) and len(modules) == len(names)


def test_declarations_are_well_formed():
    option_names = {f.name for f in fields(AcceleratorOptions)}
    for spec in registry.specs():
        assert set(spec.options) <= option_names, spec.name
        assert spec.summary and spec.devices and callable(spec.factory), spec.name
        assert set(spec.doctor) <= set(spec.devices), spec.name
    with pytest.raises(ValueError, match="unknown device types or precisions"):
        BackendSpec(name="x", summary="x", factory=lambda *a: None, precisions={"tpu": ("float32",)})


@pytest.mark.parametrize("name", registry.names())
def test_declared_precisions_are_what_check_accelerator_enforces(name):
    """Every (device, precision) outside the declaration is refused with a sentence; a declared pair is
    never a ConfigError (only what this machine lacks, an AcceleratorError: a GPU, a package, a compiler)."""
    spec = registry.get(name)
    for device in DEVICE_TYPES:
        for dtype in DTYPES:
            declared = dtype in spec.precisions.get(device, ())
            try:
                check_accelerator(name, target(device, getattr(torch, dtype)))
            except AcceleratorError:
                pass
            except ConfigError as exc:
                assert not declared, (device, dtype, str(exc))
            else:
                assert declared, (device, dtype)


def test_messages_are_the_old_ones():
    with pytest.raises(ConfigError) as caught:
        check_accelerator("directml", target())
    assert str(caught.value) == f"accelerator 'directml' is not one of {', '.join(registry.names())}"
    with pytest.raises(ConfigError) as caught:
        check_accelerator("onnxruntime", target(), {"cuda_graphs": True})
    assert str(caught.value) == "cuda_graphs=True is an option of accelerator 'compile', not 'onnxruntime'"
    for options in ({"openvino_device": "GPU"}, {"weights": "int8"}):
        with pytest.raises(ConfigError) as caught:
            check_accelerator("eager", target(), options)
        assert str(caught.value) == "weights and openvino_device are options of accelerator 'openvino', not 'eager'"
    with pytest.raises(ConfigError, match="opset 21 is above 20"):
        check_accelerator("tensorrt", target("cuda", torch.float16), {"opset": 21})
    with pytest.raises(ConfigError, match="outside the accelerator resolution range"):
        check_accelerator("compile", target(), {"resolution": (128, 128, 256, 256)})
    check_accelerator("eager", target(), {"resolution": (128, 128, 256, 256)})  # eager takes no resolution


def test_the_apps_lists_come_from_the_registry(monkeypatch):
    from livediff.app import doctor
    from livediff.app.commands.engines import build_accelerators

    def shipped(names):  # a backend added later may join these lists: the shipped ones keep theirs
        return [name for name in names if name in SHIPPED]

    assert build_accelerators()[0] == "tensorrt"  # the default first
    assert shipped(build_accelerators()) == ["tensorrt", "onnxruntime", "openvino"]
    assert shipped(doctor.default_backends(cuda=True)) == ["eager", "compile", "onnxruntime", "tensorrt"]
    monkeypatch.setattr(doctor, "_version", lambda package: None)
    assert shipped(doctor.default_backends(cuda=False)) == ["eager", "onnxruntime"]
    monkeypatch.setattr(doctor, "_version", lambda package: "1.0")
    assert shipped(doctor.default_backends(cuda=False)) == ["eager", "onnxruntime", "openvino"]


class RecordingBackend:
    """Eager, counting its runners: a backend that only this test registers."""

    name = "recording"
    static_rows = False

    def __init__(self, seen: list):
        self.seen = seen

    def runner(self, function):
        from livediff.accelerators.eager import EagerRunner

        self.seen.append(function.name)
        return EagerRunner(function)


def test_a_backend_registered_in_one_place_is_usable_everywhere(scratch_registry, capsys):
    from livediff.app.cli import main
    from livediff.app.commands.doctor import _backends
    from livediff.app.ui.engine import session_batch_limit
    from livediff.pipelines import load_pipeline
    from livediff.pipelines.causal.runners import unsupported_accelerator

    seen, checked = [], []
    registry.register(BackendSpec(
        name="recording", order=15, summary="eager, counting its runners",
        factory=lambda target, options, progress: RecordingBackend(seen),
        options=("resolution",), precisions={"cpu": ("float32",)}, modes=("img2img",),
        check=lambda target, options: checked.append(target.device.type), fixed_rows=True))
    assert accelerators.ACCELERATORS[:3] == ("eager", "recording", "compile")

    frame = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    outputs = []
    for name in ("eager", "recording"):
        pipe = load_pipeline(model="tiny", width=64, height=64, device="cpu", dtype="float32", t_index_list=[32, 45],
                             accelerator=name, seed=3)
        pipe.prepare(prompt="a photo")
        outputs.append(pipe(frame, output="tensor"))
    assert checked and seen and torch.equal(outputs[0], outputs[1])
    with pytest.raises(ConfigError, match="outside the accelerator resolution range"):
        make_backend("recording", target(), {"resolution": (128, 128, 256, 256)})

    with pytest.raises(SystemExit):
        main(["webcam", "--help"])
    assert "recording (eager, counting its runners)" in " ".join(capsys.readouterr().out.split())
    assert _backends("eager,recording") == ["eager", "recording"]
    assert session_batch_limit("recording", None) == 1 and session_batch_limit("eager", None) > 1
    assert unsupported_accelerator("recording") == ("it does not run the causal transformer; mode 'causal-video' "
                                                    f"runs on {', '.join(registry.names(mode='causal-video'))}")
    assert "recording" not in registry.names(mode="causal-video")
    assert unsupported_accelerator("directml").startswith("unknown accelerator; ")
    assert unsupported_accelerator("onnxruntime") is None


def test_a_name_is_registered_once(scratch_registry):
    spec = registry.get("eager")
    registry.register(spec)  # the same spec again (a module imported twice): fine
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(replace(spec, factory=lambda *a: None))


def test_finding_the_backends_loads_no_torch():
    code = ("import sys, livediff.accelerators as a; names = a.ACCELERATORS; a.registry.get('tensorrt'); "
            "print(len(names), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(registry.names())), "False"]
