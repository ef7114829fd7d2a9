"""The wheel installs every sub-package: pyproject lists them explicitly (package-dir maps the
repository's folders under `livediff`), so a new folder must be listed too."""
from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"livediff": "livediff", "app": "livediff.app", "pipelines": "livediff.pipelines",
           "accelerators": "livediff.accelerators", "assets": "livediff.assets"}


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for folder, package in FOLDERS.items():
        assert config["package-dir"][package] == folder
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    assert found == set(config["packages"]), found ^ set(config["packages"])


def docker_check():
    """.ci/check_docker_cuda.py as a module (its resolution needs PyPI; its rules do not)."""
    spec = importlib.util.spec_from_file_location("check_docker_cuda", ROOT / ".ci" / "check_docker_cuda.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CU12 = {"torch": "2.10.0", "triton": "3.6.0", "nvidia-cuda-runtime-cu12": "12.8.90", "nvidia-cudnn-cu12": "9.10.2.21",
        "tensorrt-cu12-bindings": "10.13.3.9"}
CU13 = {"torch": "2.13.0", "triton": "3.7.1", "nvidia-cuda-runtime": "13.0.96", "nvidia-cufft": "12.0.0.61",
        "nvidia-cudnn-cu13": "9.20.0.48"}
DOCKERFILE = "FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04\nRUN apt-get install -y gcc python3-dev\n"


def test_the_docker_check_accepts_one_cuda_line_and_names_what_leaves_it():
    check = docker_check()
    pinned = {"torch": "2.10.0", "tensorrt": "10.13.3.9", "tensorrt-cu12": "10.13.3.9"}
    line = check.check(CU12, pinned, check.base_cuda(DOCKERFILE), DOCKERFILE)
    assert line.startswith("base CUDA 12.8 · torch 2.10.0 · CUDA 12.8 runtime")
    # the unpinned install of issue 26: a CUDA 13 torch (its libraries named without -cu13, cuFFT 12.0) on 12.8
    with pytest.raises(check.CheckFailed, match=r"CUDA 12.8 but nvidia-cuda-runtime \(CUDA 13\), nvidia-cudnn-cu13 "
                                                r"\(CUDA 13\) are built for another CUDA major"):
        check.check(CU13, {"torch": "2.13.0", "tensorrt-cu12": "10.13.3.9"}, (12, 8), DOCKERFILE)
    with pytest.raises(check.CheckFailed, match=r"tensorrt-cu13 \(CUDA 13\)"):
        check.check(CU12, dict(pinned, **{"tensorrt-cu13": "11.0.0.114"}), (12, 8), DOCKERFILE)
    with pytest.raises(check.CheckFailed, match=r"CUDA 12.8 runtime, newer than the base image's CUDA 12.6"):
        check.check(CU12, pinned, (12, 6), DOCKERFILE)
    with pytest.raises(check.CheckFailed, match="must install gcc and python3-dev"):
        check.check(CU12, pinned, (12, 8), DOCKERFILE.replace("gcc ", ""))


def test_the_image_installs_with_the_pins_the_check_reads_and_declares_no_unused_packages():
    check = docker_check()
    dockerfile = (ROOT / "Dockerfile").read_text()
    pinned = check.pins((ROOT / "docker" / "constraints.txt").read_text())
    base = check.base_cuda(dockerfile)
    assert 'pip install -c docker/constraints.txt ".[tensorrt]"' in dockerfile
    assert {"torch", "tensorrt"} <= set(pinned)
    assert {check.cuda_major(name, v) for name, v in pinned.items()} - {None} == {base[0]}
    assert "gcc" in dockerfile and "python3-dev" in dockerfile
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "polygraphy" not in str(extras)  # declared and never imported
