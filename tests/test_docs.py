"""The documentation cannot rot: README.md is the front door (at most 200 lines, a link to every
page in docs/), every relative link and image in README.md and docs/*.md resolves (anchors included),
and every example marked runnable is run.

An example is runnable when the line before its fence is `<!-- runnable -->`; other fences are
shown, not run (real models, GPUs, servers, cameras). Runnable examples run on the CPU, offline
(HF_HUB_OFFLINE=1, an empty Hugging Face home), pinned to one core, in a temporary folder that has
the repository's `assets/` (they are written to be run from the repository's folder):
- `bash`: each line is one `livediff ...` command, run through the installed console script; it must
  exit 0, and the files it names with `-o`/`--output`/`--json` must exist afterwards;
- `python`: every block runs in one interpreter started for them all (importing torch once keeps
  this file fast), each block with fresh globals in a folder of its own.
Blocks with the same text (the README repeats a page's example) run once.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MARKER = "<!-- runnable -->"
MAX_README_LINES = 200
TIMEOUT = 300

# CI (.ci/run) and the packaging checks follow these two commands: they must stay as they are.
SETUP_COMMANDS = [
    'python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[test]" && .venv/bin/livediff video '
    "assets/sample.mp4 -o out.mp4 --model tiny --width 256 --height 192 --overwrite",
    ".venv/bin/python -m pytest -q",
]
TINY_MODELS = {"tiny", "tiny-sdxl", "tiny-wan-causal"}
LOADS_A_MODEL = {"video", "webcam", "img2img", "txt2img", "build-engines"}
OUTPUT_OPTIONS = {"-o", "--output", "--json"}


@dataclass(frozen=True)
class Fence:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    runnable: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fences(page: Path) -> list[Fence]:
    """Fenced code blocks of a Markdown page (indented fences in list items too)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith("```"):
            indent, lang, start = len(lines[i]) - len(stripped), stripped[3:].strip(), i
            body = []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            assert i < len(lines), f"{page.name}:{start + 1}: unclosed code fence"
            runnable = start > 0 and lines[start - 1].strip() == MARKER
            found.append(Fence(page, start + 1, lang, "\n".join(body) + "\n", runnable))
        i += 1
    return found


def prose(page: Path) -> str:
    """The page without its code: fenced blocks and inline code spans removed."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`]*`", "", text)


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page))


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) and not target.startswith("//")


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", prose_keep_code(page), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def prose_keep_code(page: Path) -> str:
    """The page without fenced blocks (headings keep their inline code: GitHub keeps its text)."""
    text = page.read_text(encoding="utf-8")
    return re.sub(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", "", text, flags=re.S | re.M)


# --------------------------------------------------------------------------------------------- links


def test_readme_is_the_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README) if is_relative(target)}
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if page.resolve() not in linked]
    assert not missing, f"README.md does not link to docs pages: {missing}"
    assert "docs/ui.png" in links(README), "README.md shows the UI picture"


def test_docs_index_links_every_page():
    index = DOCS / "README.md"
    linked = {(DOCS / target.split("#")[0]).resolve() for target in links(index) if is_relative(target)}
    missing = [page.name for page in sorted(DOCS.glob("*.md")) if page != index and page.resolve() not in linked]
    assert not missing, f"docs/README.md does not list: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in links(page):
        if not is_relative(target):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved}")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_setup_commands_are_unchanged_and_never_run():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = [f for f in fences(README) if f.code.strip() in section]
    assert [f.code.strip() for f in blocks] == SETUP_COMMANDS
    assert all(f.lang == "bash" and not f.runnable for f in blocks)


# ------------------------------------------------------------------------------------------ examples


def runnable(lang: str) -> list[Fence]:
    """Runnable blocks of one language, one per distinct text (the first place it appears)."""
    unique: dict[str, Fence] = {}
    for page in PAGES:
        for fence in fences(page):
            if fence.runnable and fence.lang == lang:
                unique.setdefault(fence.code, fence)
    return list(unique.values())


BASH, PYTHON = runnable("bash"), runnable("python")


def test_markers_sit_on_fences_and_examples_exist():
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            if line.strip() == MARKER:
                assert n + 1 < len(lines) and lines[n + 1].lstrip().startswith("```"), \
                    f"{page.name}:{n + 1}: {MARKER} must be the line right before a code fence"
        for fence in fences(page):
            assert not fence.runnable or fence.lang in ("bash", "python"), f"{fence.where}: runnable {fence.lang!r}?"
    in_readme = [f for f in fences(README) if f.runnable]
    assert {f.lang for f in in_readme} == {"bash", "python"}, "the README shows runnable CLI and Python examples"
    assert len(BASH) >= 4 and len(PYTHON) >= 4


def commands(fence: Fence) -> list[list[str]]:
    """One argv per line (backslash continuations joined, comments dropped); each must be a safe
    `livediff` command: no server, no camera, a tiny preset, and an end."""
    joined = re.sub(r"\\\n", " ", fence.code)
    argvs = []
    for line in joined.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        assert argv[0] == "livediff", f"{fence.where}: runnable bash lines are `livediff ...` commands, not {argv[0]!r}"
        command = argv[1]
        assert command != "ui", f"{fence.where}: `livediff ui` starts a server; don't mark it runnable"
        if command in LOADS_A_MODEL:
            model = argv[argv.index("--model") + 1] if "--model" in argv else "stabilityai/sd-turbo"
            assert model in TINY_MODELS, f"{fence.where}: runnable examples use a tiny preset, not {model!r}"
        if command == "webcam":
            assert "--camera" in argv and "-o" in argv and ("--max-frames" in argv or "--seconds" in argv), \
                f"{fence.where}: a runnable webcam example reads a file, writes a file and stops"
        argvs.append(argv)
    assert argvs, f"{fence.where}: an empty runnable block"
    return argvs


def livediff_command() -> list[str]:
    script = Path(sys.executable).with_name("livediff")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from livediff.app.cli import main; sys.exit(main())"]


#: pins itself to one core, then becomes the command in its arguments (not `preexec_fn`, which can
#: deadlock a child forked from a test process that has threads, e.g. after the WebRTC tests)
PIN_ONE_CORE = ("import os, sys\n"
                "if hasattr(os, 'sched_setaffinity'):\n"
                "    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
                "os.execvp(sys.argv[1], sys.argv[1:])")


def one_core(command: list[str]) -> list[str]:
    """`command` run on one core, so `--threads auto` and torch's pools use one thread."""
    return [sys.executable, "-c", PIN_ONE_CORE, *command]


@pytest.fixture()
def workdir(tmp_path):
    """A folder like the repository's for the examples (its `assets/`), and an offline environment."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "assets").symlink_to(ROOT / "assets", target_is_directory=True)
    (tmp_path / "hf-home").mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"),
               LIVEDIFF_CACHE_DIR=str(tmp_path / "engine-cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    return work, env


@pytest.mark.parametrize("fence", BASH, ids=lambda f: f.where)
def test_runnable_cli_example(fence, workdir):
    work, env = workdir
    for argv in commands(fence):
        run = subprocess.run(one_core([*livediff_command(), *argv[1:]]), cwd=work, env=env, capture_output=True,
                             text=True, timeout=TIMEOUT)
        assert run.returncode == 0, f"{fence.where}: `{shlex.join(argv)}` exited {run.returncode}:\n{run.stderr[-3000:]}"
        for option in OUTPUT_OPTIONS & set(argv):
            output = work / argv[argv.index(option) + 1]
            assert output.exists(), f"{fence.where}: `{shlex.join(argv)}` did not write {output.name}"


RUNNER = textwrap.dedent("""
    import json, os, sys, traceback
    blocks = json.load(open(sys.argv[1]))
    results = {}
    for block in blocks:
        os.chdir(block["dir"])
        try:
            exec(compile(block["code"], block["where"], "exec"), {"__name__": "__main__"})
            results[block["where"]] = None
        except BaseException:
            results[block["where"]] = traceback.format_exc()
    json.dump(results, open(sys.argv[2], "w"))
""")


@pytest.fixture(scope="module")
def python_results(tmp_path_factory):
    """Run every runnable Python block in one fresh interpreter; a traceback (or None) per block."""
    base = tmp_path_factory.mktemp("python-examples")
    (base / "hf-home").mkdir()
    blocks = []
    for n, fence in enumerate(PYTHON):
        work = base / f"example-{n}"
        work.mkdir()
        (work / "assets").symlink_to(ROOT / "assets", target_is_directory=True)
        blocks.append(dict(where=fence.where, code=fence.code, dir=str(work)))
    (base / "blocks.json").write_text(json.dumps(blocks))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(base / "hf-home"),
               LIVEDIFF_CACHE_DIR=str(base / "engine-cache"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    run = subprocess.run(one_core([sys.executable, "-c", RUNNER, str(base / "blocks.json"), str(base / "results.json")]),
                         cwd=base, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, f"the example runner failed:\n{run.stderr[-3000:]}"
    return json.loads((base / "results.json").read_text())


@pytest.mark.parametrize("fence", PYTHON, ids=lambda f: f.where)
def test_runnable_python_example(fence, python_results):
    error = python_results[fence.where]
    assert error is None, f"{fence.where} failed:\n{error}"
