"""The wheel installs every sub-package: pyproject lists them explicitly (package-dir maps the
repository's folders under `livediff`), so a new folder must be listed too."""
from __future__ import annotations

import tomllib
from pathlib import Path

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
