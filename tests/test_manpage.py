"""The man page is generated from the parser (scripts/manpage.py) and kept up to date; every
command, argument and option of `ssaproxy` and `twistd ssaproxy` has a help text."""

from __future__ import annotations

import argparse
import re
import runpy
import shutil
import subprocess
import sys

import pytest

from ssaproxy.cli import build_parser
from ssaproxy.tap import Options
from tests.lab import REPO

REGENERATE = ".venv/bin/python scripts/manpage.py > docs/ssaproxy.1"


def test_the_committed_man_page_is_what_the_parser_generates() -> None:
    render = runpy.run_path(str(REPO / "scripts" / "manpage.py"))["render"]
    committed = (REPO / "docs" / "ssaproxy.1").read_text()
    assert committed == render(), f"docs/ssaproxy.1 is out of date: run `{REGENERATE}` and commit it"


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_the_man_page_renders_without_warnings() -> None:
    r = subprocess.run(["man", "--warnings", "-l", "-Tutf8", str(REPO / "docs" / "ssaproxy.1")],
                       capture_output=True, text=True, timeout=60, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = re.sub(".\x08", "", r.stdout).replace("\u2010", "-")  # no overstrike bold, ASCII hyphens
    for words in ("check-config", "--as-user", "iptables", "connect", "twistd", "EXIT STATUS"):
        assert words in text, words


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"command {name} has no help"
                assert sub.description, f"command {name} has no description"
                found += _parsers(sub)
    return found


def test_every_command_argument_and_option_has_help() -> None:
    for prog, parser in _parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{prog}: {action.option_strings or action.dest} has no help"
    for long, _, _, text in Options.optParameters:
        assert text, f"twistd ssaproxy --{long} has no help"


def test_help_of_every_command_prints() -> None:
    for command in ([], ["check-config"], ["iptables"], ["connect"]):
        r = subprocess.run([sys.executable, "-m", "ssaproxy.cli", *command, "--help"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "usage: ssaproxy" in r.stdout, r.stderr
