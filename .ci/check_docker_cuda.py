#!/usr/bin/env python3
"""CI check: the Docker image's Python packages and its base image are on one CUDA line.

An unpinned `pip install ".[tensorrt]"` once resolved a torch built for CUDA 13 on a CUDA 12.8 base:
on a host whose driver only reaches 12.8, torch then sees no GPU. The pins live in
docker/constraints.txt (the Dockerfile installs with them); this check resolves the image's
requirements against PyPI as the image would (`pip install --dry-run --report`, Linux x86-64,
the base image's Python, wheels only: metadata is fetched, no wheel is downloaded) and fails unless

  * torch resolves to its pin, and torch, every `nvidia-*` CUDA library and every `tensorrt-cuNN*`
    package (resolved or pinned) name one CUDA major, the base image's (`FROM nvidia/cuda:X.Y...`);
  * the CUDA runtime wheel is not newer than the base image's CUDA (the driver must reach it);
  * the image installs a C compiler and Python headers when Triton is resolved (it compiles at start).

The `tensorrt` and `tensorrt-cuNN-libs` packages on PyPI are source stubs that fetch their wheels
from pypi.nvidia.com at install time, so only the TensorRT bindings wheel (on PyPI) is resolved;
the other TensorRT pins are checked by name. Needs PyPI; without it, it fails in one sentence
within TIMEOUT_S instead of hanging.

    .venv/bin/python .ci/check_docker_cuda.py
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "docker" / "constraints.txt"
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
PYTHON = "3.10"  # Ubuntu 22.04's python3, the base image's
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + ["manylinux2014_x86_64"]
TIMEOUT_S = 150
#: CUDA libraries named without a -cuNN suffix (CUDA 13 wheels) whose version is the toolkit's
VERSIONED_LIKE_CUDA = ("nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cublas")
#: pip settings of this machine that must not leak into a resolution meant to be PyPI's
PIP_LOCAL = ("PIP_FIND_LINKS", "PIP_CONSTRAINT", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX")


class CheckFailed(Exception):
    """One sentence saying what is wrong with the image's CUDA line."""


def name_of(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise CheckFailed(f"cannot read the requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def pins(text: str) -> dict[str, str]:
    """name → version of every `name==version` line of a constraints file."""
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                raise CheckFailed(f"docker/constraints.txt: {line!r} is not a name==version pin")
            found[name_of(name)] = version.strip()
    return found


def base_cuda(dockerfile: str) -> tuple[int, int]:
    match = re.search(r"^FROM\s+nvidia/cuda:(\d+)\.(\d+)", dockerfile, re.MULTILINE)
    if match is None:
        raise CheckFailed("the Dockerfile's FROM line is not an nvidia/cuda:X.Y image")
    return int(match.group(1)), int(match.group(2))


def cuda_major(name: str, version: str) -> int | None:
    """The CUDA major a CUDA library or TensorRT package is built for (None: not one of those)."""
    suffix = re.search(r"-cu(\d+)(-|$)", name)
    if suffix and name.startswith(("nvidia-", "tensorrt")):
        return int(suffix.group(1))
    if name in VERSIONED_LIKE_CUDA:
        return int(version.split(".")[0])
    return None


def cuda_runtime(installed: dict[str, str]) -> tuple[int, int] | None:
    for name, version in installed.items():
        if re.fullmatch(r"nvidia-cuda-runtime(-cu\d+)?", name):
            major, minor = version.split(".")[:2]
            return int(major), int(minor)
    return None


def check(installed: dict[str, str], pinned: dict[str, str], base: tuple[int, int], dockerfile: str) -> str:
    """The image's CUDA line as one line of text; `CheckFailed` when it is not one line."""
    if installed.get("torch") != pinned.get("torch"):
        raise CheckFailed(f"torch resolves to {installed.get('torch')}, not its pin {pinned.get('torch')} "
                          f"in docker/constraints.txt")
    majors: dict[str, int] = {}
    for name, version in [*installed.items(), *pinned.items()]:
        major = cuda_major(name, version)
        if major is not None:
            majors[name] = major
    runtime = cuda_runtime(installed)
    if runtime is None:
        raise CheckFailed(f"torch {installed['torch']} pulls in no CUDA runtime wheel: it is not a CUDA build")
    others = sorted(f"{name} (CUDA {major})" for name, major in majors.items() if major != base[0])
    if others:
        raise CheckFailed(f"the base image is CUDA {base[0]}.{base[1]} but {', '.join(others)} are built for "
                          f"another CUDA major; pin them to CUDA {base[0]} in docker/constraints.txt")
    if runtime > base:
        raise CheckFailed(f"torch {installed['torch']} brings the CUDA {runtime[0]}.{runtime[1]} runtime, newer than "
                          f"the base image's CUDA {base[0]}.{base[1]}: a driver that suits the base can be too old "
                          f"for torch")
    if not any(name.startswith("tensorrt") for name in majors):
        raise CheckFailed("no TensorRT package is pinned in docker/constraints.txt")
    if "triton" in installed and not (re.search(r"\bgcc\b", dockerfile) and "python3-dev" in dockerfile):
        raise CheckFailed(f"triton {installed['triton']} compiles its launcher when torch starts: the Dockerfile "
                          f"must install gcc and python3-dev")
    tensorrt = next((f"{n} {v}" for n, v in installed.items() if n.startswith("tensorrt")), "tensorrt")
    return (f"base CUDA {base[0]}.{base[1]} · torch {installed['torch']} · CUDA {runtime[0]}.{runtime[1]} runtime · "
            f"{sum(n.startswith('nvidia-') for n in majors)} nvidia-* wheels and {tensorrt} on CUDA {base[0]}")


def requirements(pinned: dict[str, str]) -> list[str]:
    """The image's Python requirements (project + `tensorrt` extra), TensorRT as its PyPI wheel."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["tensorrt"]]
    bindings = [f"{name}=={version}" for name, version in pinned.items()
                if name.startswith("tensorrt-") and name.endswith("-bindings")]
    if not bindings:
        raise CheckFailed("docker/constraints.txt pins no tensorrt-cuNN-bindings package")
    return [r for r in wanted if not name_of(r).startswith("tensorrt")] + bindings


def resolve(wanted: list[str]) -> dict[str, str]:
    """name → version pip would install for the image (metadata only: nothing is downloaded)."""
    env = {k: v for k, v in os.environ.items() if k not in PIP_LOCAL}
    env["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--report", str(report), "--python-version", PYTHON, "--only-binary=:all:",
                   "--index-url", "https://pypi.org/simple", "--timeout", "15", "--retries", "1",
                   "-c", str(CONSTRAINTS), *(f"--platform={p}" for p in PLATFORMS), *wanted]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"resolving the image's requirements took over {TIMEOUT_S} s (is PyPI reachable?)") from None
        if done.returncode != 0:
            if re.search(r"connection broken|NewConnectionError|ProxyError|Read timed out", done.stderr):
                raise CheckFailed("PyPI (https://pypi.org/simple) is unreachable from here, so the image's "
                                  "requirements cannot be resolved; run this check where PyPI answers")
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or ["no message"]
            raise CheckFailed(f"pip cannot resolve the image's requirements from PyPI: {' '.join(errors)}")
        return {name_of(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}


def main() -> int:
    started = time.monotonic()
    try:
        pinned = pins(CONSTRAINTS.read_text())
        dockerfile = DOCKERFILE.read_text()
        line = check(resolve(requirements(pinned)), pinned, base_cuda(dockerfile), dockerfile)
    except CheckFailed as failure:
        print(f"docker CUDA check: FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"docker CUDA check: ok, {line} (resolved in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
