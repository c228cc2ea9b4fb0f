"""The documentation cannot drift from the program.

The CLI reference page of the documentation site and the ``platpass(1)`` man page are
generated from the argparse parsers (``platpass.cli.reference``); these tests check the
generated reference against what ``platpass COMMAND --help`` really prints, for every
subcommand, and that every help ends with the documentation link. (The site itself is built
with ``mkdocs build --strict`` by ``scripts/test``, before pytest.)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from platpass import cli
from platpass.cli import reference

REPO = Path(__file__).resolve().parents[1]


def reference_blocks() -> dict[str | None, str]:
    """The help text under each command's heading in the generated reference page."""
    page = reference.markdown()
    blocks: dict[str | None, str] = {}
    for match in re.finditer(r"^## `platpass( [\w-]+)?` \{#[\w-]+\}\n.*?```text\n(.*?)\n```",
                             page, re.M | re.S):
        name = match.group(1).strip() if match.group(1) else None
        blocks[name] = match.group(2)
    return blocks


def printed_help(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str,
) -> str:
    """What ``platpass ARGV --help`` prints, through the console script's entry point."""
    monkeypatch.setenv("COLUMNS", str(reference.WIDTH))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def all_commands() -> list[str]:
    return [name for name, _, _ in reference.commands()]


def test_reference_lists_every_subcommand() -> None:
    names = all_commands()
    modules = {cli.COMMAND_MODULES.get(name, name) for name in names}
    assert modules == set(cli.SUBCOMMANDS), "a subcommand module registers no command"
    assert set(reference_blocks()) == {None, *names}


@pytest.mark.parametrize("command", [None, *all_commands()])
def test_reference_matches_help(
    command: str | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    printed = printed_help(capsys, monkeypatch, *([command] if command else []))
    assert reference_blocks()[command] == printed.rstrip()


def test_reference_matches_the_installed_command() -> None:
    """The real process (``python -m platpass``), not only the parser in this process."""
    env = {**os.environ, "COLUMNS": str(reference.WIDTH),
           "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO / "src"),
                                                       os.environ.get("PYTHONPATH"))))}
    blocks = reference_blocks()
    for argv, key in ((["--help"], None), (["guest-dt", "--help"], "guest-dt")):
        out = subprocess.run([sys.executable, "-m", "platpass", *argv], env=env,
                             capture_output=True, text=True, check=True, timeout=60).stdout
        assert out.rstrip() == blocks[key]


@pytest.mark.parametrize("command", [None, *all_commands()])
def test_help_ends_with_the_docs_link(
    command: str | None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    printed = printed_help(capsys, monkeypatch, *([command] if command else []))
    last = printed.rstrip().split("\n\n")[-1]
    assert " ".join(last.split()) == reference.docs_epilog(command)
    assert "man platpass" in last
    assert last.endswith(f"page cli/#platpass-{command}" if command else "page cli/")


def test_docs_links_point_at_reference_sections() -> None:
    page = reference.markdown()
    for name in all_commands():
        anchor = reference.docs_epilog(name).split("#", 1)[1].split()[0]
        assert f"{{#{anchor}}}" in page


def test_manpage_covers_every_command_and_option() -> None:
    man = reference.manpage()
    assert man.startswith('.\\" Generated') and "\n.TH PLATPASS 1 " in man
    for name, _, parser in reference.commands():
        assert f'\n.SH "PLATPASS {name.upper()}"\n' in man
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                assert option.replace("-", "\\-") in man, (name, option)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff (package groff-base) absent")
def test_manpage_renders_without_warnings(tmp_path: Path) -> None:
    page = tmp_path / "platpass.1"
    assert reference.main(["man", "-o", str(page)]) == 0
    run = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == ""


def test_mkdocs_nav_names_every_page() -> None:
    """Cheap guard beside the strict build: each docs/*.md is in mkdocs.yml's nav."""
    config = (REPO / "mkdocs.yml").read_text()
    pages = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages, "no documentation pages"
    for page in sorted(pages):
        assert f" {page}\n" in config, f"docs/{page} is not in mkdocs.yml's nav"
    assert " cli.md\n" in config  # generated by docs/hooks.py
