#!/usr/bin/env python3
"""CI type check: pyright, pinned and installed from npm into .ci/node_modules, in basic mode with
[tool.pyright] from pyproject.toml (interpreter: .venv). Fails when

  (a) an import does not resolve (reportMissingImports, reportMissingModuleSource), apart from the
      few third-party modules in NOT_INSTALLED that `pip install -e ".[test]"` does not install;
      every `livediff.*` import must resolve;
  (b) the error count of any rule rises above .ci/pyright-baseline.json. The baseline only goes
      down: when a count drops, the check says so, and `--write-baseline` lowers the file. Counts
      may rise only together with a new PYRIGHT_VERSION (then `--write-baseline` takes the new
      version's counts as they are).

    .venv/bin/python .ci/pyright_check.py [--write-baseline]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

PYRIGHT_VERSION = "1.1.414"
CI = Path(__file__).resolve().parent
ROOT = CI.parent
BASELINE = CI / "pyright-baseline.json"
NODE_MODULES = CI / "node_modules"
IMPORT_RULES = ("reportMissingImports", "reportMissingModuleSource")
NOT_INSTALLED = {  # top-level module -> why pyright may not find it in CI's venv
    "tensorrt": "the [tensorrt] extra (NVIDIA GPUs only), imported lazily",
    "streamdiffusion": "benchmarks/cpu_backends.py compares against it when it is installed",
}


def pyright_executable() -> Path:
    exe = NODE_MODULES / ".bin" / "pyright"
    package = NODE_MODULES / "pyright" / "package.json"
    if not (exe.exists() and package.exists()
            and json.loads(package.read_text()).get("version") == PYRIGHT_VERSION):
        subprocess.run(["npm", "install", "--prefix", str(CI), "--no-save", "--no-package-lock", "--no-audit",
                        "--no-fund", "--loglevel=error", f"pyright@{PYRIGHT_VERSION}"], check=True)
    return exe


def run_pyright() -> dict:
    result = subprocess.run([str(pyright_executable()), "--outputjson", "--project", str(ROOT)],
                            cwd=ROOT, capture_output=True, text=True)
    # 0: no errors, 1: errors reported; anything else is a configuration or internal failure
    if result.returncode not in (0, 1):
        sys.exit(f"pyright failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    report = json.loads(result.stdout)
    if not report["summary"]["filesAnalyzed"]:
        sys.exit("pyright analysed no files: check [tool.pyright] include in pyproject.toml")
    return report


def where(diagnostic: dict) -> str:
    path = Path(diagnostic["file"])
    if path.is_relative_to(ROOT):
        path = path.relative_to(ROOT)
    return f"{path}:{diagnostic['range']['start']['line'] + 1}"


def unresolved_imports(diagnostics: list[dict]) -> list[str]:
    problems = []
    for d in diagnostics:
        if d.get("rule") not in IMPORT_RULES:
            continue
        match = re.search(r'Import "([^"]+)"', d["message"])
        top = match.group(1).split(".")[0] if match else ""
        if top in NOT_INSTALLED:
            continue
        problems.append(f"{where(d)}: {d['message']} [{d['rule']}]")
    return problems


def error_counts(diagnostics: list[dict]) -> Counter[str]:
    """Errors per rule; unresolved imports are (a)'s business, not the baseline's."""
    return Counter(d.get("rule", "(no rule)") for d in diagnostics
                   if d["severity"] == "error" and d.get("rule") not in IMPORT_RULES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-baseline", action="store_true",
                        help="lower the baseline to the current counts (or take them as they are after a "
                             "pyright version change)")
    args = parser.parse_args()

    start = time.monotonic()
    report = run_pyright()
    diagnostics = report["generalDiagnostics"]
    counts = error_counts(diagnostics)
    total = sum(counts.values())
    baseline = json.loads(BASELINE.read_text()) if BASELINE.exists() else None
    same_version = baseline is not None and baseline.get("pyright") == PYRIGHT_VERSION
    allowed: dict[str, int] = baseline["errors"] if baseline else {}
    baseline_total = sum(allowed.values()) if baseline else "none"
    print(f"pyright {PYRIGHT_VERSION}: {report['summary']['filesAnalyzed']} files, {total} errors "
          f"(baseline {baseline_total}), {time.monotonic() - start:.0f} s")

    failed = False
    unresolved = unresolved_imports(diagnostics)
    if unresolved:
        failed = True
        print(f"\nFAIL: {len(unresolved)} unresolved import(s):")
        print("\n".join(f"  {line}" for line in unresolved))

    rules = sorted(set(counts) | set(allowed))
    if not same_version:
        why = (f"no {BASELINE.relative_to(ROOT)}" if baseline is None
               else f"the baseline was counted with pyright {baseline.get('pyright')}, this is {PYRIGHT_VERSION}")
        if not args.write_baseline:
            failed = True
            print(f"\nFAIL: {why}: run `.ci/pyright_check.py --write-baseline` and commit "
                  f"{BASELINE.relative_to(ROOT)}")
    else:
        rose = {r: (allowed.get(r, 0), counts[r]) for r in rules if counts[r] > allowed.get(r, 0)}
        fell = {r: (allowed.get(r, 0), counts[r]) for r in rules if counts[r] < allowed.get(r, 0)}
        if rose:
            failed = True
            print(f"\nFAIL: more errors than {BASELINE.relative_to(ROOT)} allows (fix them; the baseline only "
                  f"goes down):")
            for rule, (was, now) in rose.items():
                print(f"  {rule}: {now} > {was}; all of them:")
                for d in diagnostics:
                    if d["severity"] == "error" and d.get("rule", "(no rule)") == rule:
                        print(f"    {where(d)}: {d['message'].splitlines()[0]}")
        if fell:
            print(f"\nThe baseline can be lowered (run `.ci/pyright_check.py --write-baseline` and commit "
                  f"{BASELINE.relative_to(ROOT)}):")
            for rule, (was, now) in fell.items():
                print(f"  {rule}: {was} -> {now}")

    if args.write_baseline:
        new = dict(counts) if not same_version else {r: min(counts[r], allowed.get(r, 0)) for r in rules}
        new = {r: n for r, n in sorted(new.items()) if n}
        BASELINE.write_text(json.dumps({"pyright": PYRIGHT_VERSION, "total": sum(new.values()), "errors": new},
                                       indent=2) + "\n")
        print(f"\nwrote {BASELINE.relative_to(ROOT)}: {sum(new.values())} errors")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
