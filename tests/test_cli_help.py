"""`--help` explains every option, and every `livediff` command the README and docs show parses."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from livediff.app.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def options_without_help(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from options_without_help(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_option_of_every_command_has_help_text():
    assert list(options_without_help(build_parser(), "livediff")) == []


COMMAND_NAMES = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def documented_commands() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(page, line) of every whole `livediff …` command in the pages' fenced blocks, and of every
    `livediff <command> …` mention in their inline code (often a command with some of its options)."""
    whole, mentions = [], []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = re.split(r"\s#\s", line)[0].strip()
                if line.startswith("livediff "):
                    whole.append((page.name, line))
        for span in re.findall(r"`(livediff [^`]+)`", text):
            if span.split()[1] in COMMAND_NAMES:
                mentions.append((page.name, span))
    return whole, mentions


WHOLE, MENTIONS = documented_commands()


def subcommand(words: list[str]) -> argparse.ArgumentParser:
    """The parser of `livediff words[0] [words[1]]` (e.g. `engines list`)."""
    parser = build_parser()._subparsers._group_actions[0].choices[words[0]]  # type: ignore[union-attr]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and len(words) > 1 and words[1] in action.choices:
            return action.choices[words[1]]
    return parser


def test_the_docs_show_commands():
    assert len(WHOLE) >= 20 and len(MENTIONS) >= 10


@pytest.mark.parametrize("page,line", WHOLE, ids=[f"{p}:{i}" for i, (p, _) in enumerate(WHOLE)])
def test_every_documented_command_parses(page, line):
    try:
        build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as exit_:
        if exit_.code:
            pytest.fail(f"{page}: `{line}` does not parse")


@pytest.mark.parametrize("page,line", WHOLE + MENTIONS, ids=[f"{p}:{i}" for i, (p, _) in enumerate(WHOLE + MENTIONS)])
def test_every_option_the_docs_name_exists(page, line):
    words = line.split()[1:]
    parser = subcommand(words)
    known = {option for action in parser._actions for option in action.option_strings}
    named = {word.split("=")[0] for word in words if re.fullmatch(r"--[a-z0-9-]+(=.*)?", word)}
    assert named <= known, f"{page}: `{line}` names {sorted(named - known)}, which `livediff {words[0]}` lacks"


@pytest.mark.parametrize("argv", [["-v", "eval", "a", "b"], ["eval", "a", "b", "-v"], ["engines", "list", "-v"],
                                  ["-v", "engines", "list"]])
def test_verbose_is_accepted_before_and_after_the_command(argv):
    assert build_parser().parse_args(argv).verbose is True


def test_verbose_stays_off_unless_given():
    assert build_parser().parse_args(["eval", "a", "b"]).verbose is False


def test_python_dash_m_livediff_is_the_livediff_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "livediff", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: livediff")


def test_engines_clear_offers_every_kind_the_cache_holds():
    from livediff.accelerators.engine_cache import KINDS
    from livediff.app.commands.engines import CACHE_KINDS

    assert CACHE_KINDS == KINDS


def test_the_benchmarks_said_to_take_a_device_take_one():
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    named = re.findall(r"`([a-z_]+\.py)`", text.split("<!-- device-benchmarks -->")[1].split("<!-- /device-benchmarks -->")[0])
    assert len(named) >= 4
    assert [name for name in named if '"--device"' not in (ROOT / "benchmarks" / name).read_text()] == []
