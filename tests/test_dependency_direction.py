"""Dependencies run one way: errors → network functions → accelerators → pipelines → app.

Read from the source (every import statement, including the lazy ones inside functions), so a
backward import fails here even when no test happens to execute it.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# layer → (its folder or file, the livediff packages it must not import)
LAYERS = {
    "errors": (ROOT / "livediff" / "errors.py", ("livediff.networks", "livediff.accelerators", "livediff.pipelines",
                                                  "livediff.app")),
    "files": (ROOT / "livediff" / "files.py", ("livediff.networks", "livediff.accelerators", "livediff.pipelines",
                                                "livediff.app")),
    "registry": (ROOT / "livediff" / "registry.py", ("livediff.networks", "livediff.accelerators",
                                                      "livediff.pipelines", "livediff.app")),
    "network outputs": (ROOT / "livediff" / "network_outputs.py", ("livediff.accelerators", "livediff.pipelines",
                                                                    "livediff.app")),
    "networks": (ROOT / "livediff" / "networks.py", ("livediff.accelerators", "livediff.pipelines", "livediff.app")),
    "accelerators": (ROOT / "accelerators", ("livediff.pipelines", "livediff.app")),
    "pipelines": (ROOT / "pipelines", ("livediff.app",)),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(location: Path) -> list[Path]:
    return [location] if location.is_file() else sorted(location.rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_later_one(layer):
    location, forbidden = LAYERS[layer]
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for path in sources(location) for name in sorted(imported_modules(path))
                 if name.startswith(forbidden)]
    assert not offenders, offenders


def test_nothing_imports_the_old_top_level_names():
    """Installed, the folders are `livediff.app`, `livediff.pipelines`, ...: a bare `app` would not exist."""
    folders = [ROOT / name for name in ("app", "pipelines", "accelerators", "livediff", "tests", "benchmarks",
                                        "assets")]
    offenders = [f"{path.relative_to(ROOT)} imports {name}"
                 for folder in folders for path in sources(folder) for name in imported_modules(path)
                 if name.split(".")[0] in ("app", "pipelines", "accelerators", "assets")]
    assert not offenders, offenders


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(result.stdout.split())


@pytest.mark.parametrize("statement", ["import livediff", "import livediff.pipelines",
                                       "from livediff import ConfigError"])
def test_the_namespace_and_its_errors_import_without_torch(statement):
    loaded = loaded_after(statement)
    assert not {"torch", "diffusers", "transformers"} & loaded


def test_accelerators_import_without_diffusers():
    """A backend is given pure tensor functions; it needs torch, never the model library."""
    loaded = loaded_after("import livediff.accelerators, livediff.accelerators.onnx_export")
    assert "torch" in loaded and not {"diffusers", "transformers", "livediff.pipelines"} & loaded
