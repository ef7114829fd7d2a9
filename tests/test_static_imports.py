"""Static analysers (pyright, mypy, editors) resolve `livediff.app`, `livediff.pipelines`, ... on disk.

They do not run the editable install's import hook, so every folder that pyproject's package-dir
maps under `livediff` is also a relative symlink inside livediff/ (livediff/app -> ../app, ...).
These tests check that arrangement by static means (no pyright; .ci/pyright_check.py runs it).
"""
from __future__ import annotations

import ast
import importlib.util
import os
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
PACKAGE_DIR: dict[str, str] = CONFIG["setuptools"]["package-dir"]
LINKED = {package: folder for package, folder in PACKAGE_DIR.items() if package != "livediff"}
SOURCE_FOLDERS = ("livediff", "app", "pipelines", "accelerators", "assets", "tests", "benchmarks")


def on_disk(module: str) -> Path | None:
    """What an analyser finds for a dotted name, walking folders from the repository root."""
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def installed_from(package: str) -> Path:
    """The folder setuptools installs `package` from (package-dir, longest prefix)."""
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in PACKAGE_DIR:
            return ROOT.joinpath(PACKAGE_DIR[prefix], *parts[cut:])
    raise AssertionError(f"{package} is not under a package-dir entry")


@pytest.mark.parametrize("package", sorted(LINKED))
def test_each_mapped_folder_is_a_relative_link_inside_livediff(package):
    link, folder = ROOT.joinpath(*package.split(".")), ROOT / LINKED[package]
    assert link.is_symlink(), f"{link.relative_to(ROOT)} must be a symlink to {LINKED[package]}/ (not a copy)"
    # relative, so it holds in any clone, copy or Docker build context
    assert os.readlink(link) == os.path.relpath(folder, link.parent)
    assert link.resolve() == folder.resolve()


def test_every_listed_package_resolves_on_disk_to_the_folder_it_is_installed_from():
    for package in CONFIG["setuptools"]["packages"]:
        init = on_disk(package)
        assert init is not None and init.name == "__init__.py", f"{package} does not resolve from the root"
        assert init.parent.resolve() == installed_from(package).resolve(), package


def livediff_imports(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return [(name, line) for name, line in found if name == "livediff" or name.startswith("livediff.")]


def test_every_livediff_import_in_the_repository_resolves_on_disk():
    """Each `import livediff.x.y` / `from livediff.x.y import z` finds its module by walking folders
    (`z` may be a name, not a module). rglob does not descend into the links, so each file once."""
    sources = [path for folder in SOURCE_FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))]
    imports = [(path, name, line) for path in sources for name, line in livediff_imports(path)]
    assert len(imports) > 100  # the repository is read, not an empty folder
    unresolved = [f"{path.relative_to(ROOT)}:{line} {name}" for path, name, line in imports if on_disk(name) is None]
    assert not unresolved, unresolved


@pytest.mark.parametrize("package", sorted(LINKED))
def test_the_installed_package_and_the_link_name_the_same_folder(package):
    spec = importlib.util.find_spec(package)  # imports only `livediff` itself (no torch)
    assert spec is not None and spec.submodule_search_locations is not None
    locations = {Path(location).resolve() for location in spec.submodule_search_locations}
    assert locations == {(ROOT / LINKED[package]).resolve()}


def test_pyright_checks_each_file_once_under_its_own_folder():
    pyright = CONFIG["pyright"]
    assert set(SOURCE_FOLDERS) <= set(pyright["include"])
    links = {"/".join(package.split(".")) for package in LINKED}
    assert links <= set(pyright["exclude"]), "the links would make pyright check every file twice"
    assert (pyright["venvPath"], pyright["venv"]) == (".", ".venv")  # the README's set-up
