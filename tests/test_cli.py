"""The command-line front end: lazy loading of subcommand modules."""

from __future__ import annotations

import subprocess
import sys

import pytest

from platpass.cli import COMMAND_MODULES, SUBCOMMANDS, build_parser, main


def test_every_command_name_maps_to_a_registered_module() -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in choices:
        assert COMMAND_MODULES.get(command, command) in SUBCOMMANDS, command


@pytest.mark.parametrize("command", ["scan", "guest-dt", "release", "down", "status"])
def test_a_named_command_loads_only_its_module(command: str) -> None:
    code = (
        "import sys; from platpass.cli import build_parser, SUBCOMMANDS; "
        f"build_parser([{command!r}, '--help-not-parsed']); "
        "print(sorted(m for m in SUBCOMMANDS if 'platpass.cli.' + m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == repr([COMMAND_MODULES.get(command, command)])


def test_help_without_command_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    listed = capsys.readouterr().out
    for command in ("scan", "serve", "guest-dt", "assign", "release", "demo", "up", "down"):
        assert command in listed


def test_unknown_command_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
