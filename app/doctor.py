"""`livediff doctor`: is this machine ready, and how fast is each backend here?

Lists the device and the versions that matter, then runs a short img2img stream on every backend
that can run here, on a random-weight preset with the layout of the real model (SD-Turbo's, or with
`family="sdxl"` SDXL-Turbo's, at 512² on CUDA; `tiny` / `tiny-sdxl` on the CPU, so it answers within
a minute), compares each with eager PyTorch on the
same frames and noise, and gives one verdict per backend. Random weights: speed and agreement
are real, pictures are not.
"""
from __future__ import annotations

import importlib.metadata
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class BackendReport:
    backend: str
    verdict: str  # "ok", "slower than eager", "failed: <reason>" or "skipped: <reason>"
    fps: float | None = None
    median_ms: float | None = None
    setup_s: float | None = None
    max_abs_error: float | None = None
    rel_error: float | None = None
    #: values the stream zeroed because they were NaN or ±inf (`pipelines.nonfinite`): a float16 overflow
    nonfinite_values: int | None = None


@dataclass
class DoctorReport:
    environment: dict[str, Any]
    workload: dict[str, Any]
    backends: list[BackendReport] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "workload": self.workload,
                "backends": [asdict(b) for b in self.backends]}

    def table(self) -> str:
        """Markdown, as in the README's measurements: paste it into a report."""
        w = self.workload
        control = f" · {w['controlnets']} ControlNet(s)" if w.get("controlnets") else ""
        control += " · IP-Adapter" if w.get("ip_adapter") else ""
        env = self.environment
        versions = " · ".join(f"{name} {env[key]}" for name, key in VERSION_NAMES if env.get(key))
        lines = [f"livediff doctor · {env['device_name']} · {w['preset']} {w['size']}² "
                 f"{w['dtype']} · img2img {w['steps']} steps{control} · {w['frames']} timed frames", "",
                 versions, "",
                 "| backend | fps | median ms | setup s | max abs err | rel err | non-finite | verdict |",
                 "|---|---|---|---|---|---|---|---|"]

        def cell(value, fmt):
            return "-" if value is None else format(value, fmt)

        for b in self.backends:
            lines.append(f"| {b.backend} | {cell(b.fps, '.2f')} | {cell(b.median_ms, '.0f')} | {cell(b.setup_s, '.1f')} | "
                         f"{cell(b.max_abs_error, '.1e')} | {cell(b.rel_error, '.1e')} | {cell(b.nonfinite_values, 'd')} | "
                         f"{b.verdict} |")
        return "\n".join(lines)


#: (shown name, `environment` key) of the versions the table lists under its title
VERSION_NAMES = (("python", "python"), ("torch", "torch"), ("CUDA", "cuda_runtime"), ("driver", "driver"),
                 ("diffusers", "diffusers"), ("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                 ("tensorrt", "tensorrt"))


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                            "cuda_runtime": torch.version.cuda, "onnxruntime": _version("onnxruntime")
                            or _version("onnxruntime-gpu"), "tensorrt": _version("tensorrt"), "openvino": _version("openvino"),
                            "diffusers": _version("diffusers")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, compute_capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 1024 ** 3, 1),
                    driver=_driver_version())
    else:
        info.update(device_name=f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                                f"threads)")
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return info


def _driver_version() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def default_backends(cuda: bool) -> list[str]:
    """What a user of this machine would pick from: the backends each registry entry
    (`accelerators.registry`) says to measure on this kind of device (`BackendSpec.doctor`), those that
    need a package only when it is installed (OpenVINO is the CPU's runtime when it is there)."""
    from livediff.accelerators import registry

    device = "cuda" if cuda else "cpu"
    return [spec.name for spec in registry.specs() if device in spec.doctor
            and (spec.doctor_if_installed is None or _version(spec.doctor_if_installed))]


#: family → (preset on CUDA, preset on the CPU)
FAMILY_PRESETS = {"sd": ("sd-turbo-random", "tiny"), "sdxl": ("sdxl-turbo-random", "tiny-sdxl")}


def missing_here(backend: str, cuda: bool) -> str | None:
    """Why `backend` cannot be measured on this machine for want of a package build (a sentence), or None.

    ONNX Runtime's CPU wheel (a livediff dependency, the Docker image's too) has no CUDA provider:
    that is a wheel to swap, not a failure of this machine."""
    if backend != "onnxruntime" or not cuda:
        return None
    import torch

    from livediff.accelerators.onnxruntime_backend import providers_for
    from livediff.errors import AcceleratorError

    try:
        providers_for(torch.device("cuda"))
    except AcceleratorError as exc:
        return str(exc)
    return None


def build_notice(backend: str, workload: dict[str, Any]) -> str:
    """What the doctor says before measuring `backend`: backends that export or build their networks say
    that they do so first, for how long and where it is kept (minutes of silence look like a hang)."""
    from livediff.accelerators import registry
    from livediff.accelerators.base import default_cache_dir

    if not registry.get(backend).builds_ahead:
        return f"livediff doctor: {backend} ..."
    return (f"livediff doctor: {backend}: first exports and builds its networks for the random-weight "
            f"{workload['preset']} at {workload['size']}² (the first run can take minutes, progress below; kept "
            f"in {default_cache_dir()} so later runs start at once) ...")


def run(backends: list[str] | None = None, frames: int = 10, warmup: int = 3, progress=print,
        family: str = "sd", controlnets: int = 0, ip_adapter: bool = False) -> DoctorReport:
    """`controlnets`: measure the stream with that many random-weight ControlNets (`tile`
    preprocessor, so the figure is the networks' cost, not a host-side edge detector);
    `ip_adapter`: with a random-weight IP-Adapter whose style image is set before timing."""
    import torch

    from livediff.app.build_progress import BuildReporter
    from livediff.errors import LivediffError
    from livediff.pipelines import load_pipeline

    cuda = torch.cuda.is_available()
    on_gpu, on_cpu = FAMILY_PRESETS[family]
    workload = dict(preset=on_gpu if cuda else on_cpu, vae="taesd-random" if cuda else "tiny-taesd",
                    size=512 if cuda else 128, dtype="float16" if cuda else "float32",
                    device="cuda" if cuda else "cpu", steps=2, frames=frames, controlnets=controlnets,
                    ip_adapter=ip_adapter)
    report = DoctorReport(environment(), workload)
    chosen = backends or default_backends(cuda)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.rand(1, 3, workload["size"], workload["size"], generator=generator)
              for _ in range(warmup + frames)]
    reference: list[torch.Tensor] | None = None
    eager_fps = None
    for backend in (["eager"] if "eager" not in chosen else []) + chosen:
        missing = missing_here(backend, cuda)
        if missing is not None:
            report.backends.append(BackendReport(backend, f"skipped: {missing}"))
            continue
        progress(build_notice(backend, workload))
        started = time.perf_counter()
        try:
            pipe = load_pipeline(model=workload["preset"], vae=workload["vae"], width=workload["size"],
                                 height=workload["size"], device=workload["device"], dtype=workload["dtype"],
                                 t_index_list=[32, 45], cfg_type="self", accelerator=backend, seed=1,
                                 controlnet=[dict(model="random", preprocessor="tile")] * controlnets,
                                 ip_adapter=dict(model="random", image_encoder="random") if ip_adapter else None,
                                 progress=BuildReporter())
            pipe.prepare(prompt="a photo", guidance_scale=1.2)
            if ip_adapter:
                pipe.set_style_image(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1)))
            outputs, times = [], []
            for i, frame in enumerate(inputs):
                if cuda:
                    torch.cuda.synchronize()
                begun = time.perf_counter()
                out = pipe(frame.to(workload["device"]))
                if cuda:
                    torch.cuda.synchronize()
                if i == warmup - 1:
                    setup = time.perf_counter() - started
                if i >= warmup:
                    times.append(time.perf_counter() - begun)
                    outputs.append(out.float().cpu())
        except (LivediffError, RuntimeError, OSError, ImportError) as exc:
            if backend in chosen:
                report.backends.append(BackendReport(backend, f"failed: {str(exc).splitlines()[0][:200]}"))
            continue
        fps = len(times) / sum(times)
        nonfinite = pipe.nonfinite.read()
        entry = BackendReport(backend, "ok", fps=fps, median_ms=statistics.median(times) * 1000, setup_s=setup,
                              nonfinite_values=nonfinite.values)
        if backend == "eager":
            reference, eager_fps = outputs, fps
        elif reference is not None:
            diff = torch.stack(outputs) - torch.stack(reference)
            entry.max_abs_error = float(diff.abs().max())
            entry.rel_error = float(diff.norm() / torch.stack(reference).norm())
            tolerance = 2e-2 if workload["dtype"] == "float16" else 1e-3
            if entry.rel_error > tolerance:
                entry.verdict = f"failed: output differs from eager (relative error {entry.rel_error:.1e})"
            elif eager_fps is not None and fps < eager_fps:
                entry.verdict = "slower than eager"
        if nonfinite.values:
            entry.verdict = f"failed: {nonfinite.format()} (an overflow in {workload['dtype']}?)"
        if backend in chosen:
            report.backends.append(entry)
    return report
