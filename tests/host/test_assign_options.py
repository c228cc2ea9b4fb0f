"""``platpass assign`` takes ``serve``'s access, privilege and operations options.

The assign path itself needs a real platform device (the arm64 guest of
tests/integration/kernel serves the PL031 with ``--user 65534:65534 --allow-uid 0``); here
the command line and the refusals that must happen before anything is touched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from platpass.cli import build_parser
from platpass.cli.options import allow_lists

SHARED = ("--allow-uid", "--allow-gid", "--user", "--control", "--trace")


def _actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {opt: action for action in sub.choices[command]._actions
            for opt in action.option_strings}


def test_assign_parses_the_options_serve_has() -> None:
    args = build_parser(["assign"]).parse_args(
        ["assign", "/pl031@9010000", "--socket", "/run/rtc.sock", "--user", "65534:65534",
         "--allow-uid", "0", "--allow-uid", "root", "--allow-gid", "0",
         "--control", "/run/rtc.ctl", "--trace", "/tmp/rtc.trace"])
    assert args.user == "65534:65534"
    assert allow_lists(args) == (frozenset({0}), frozenset({0}))
    assert (args.control, args.trace) == ("/run/rtc.ctl", "/tmp/rtc.trace")


def test_defaults_keep_the_old_behaviour() -> None:
    args = build_parser(["assign"]).parse_args(["assign", "/x", "--socket", "/run/x.sock"])
    assert (args.user, args.control, args.trace) == (None, None, None)
    assert allow_lists(args) == (frozenset(), frozenset())


@pytest.mark.parametrize("option", SHARED)
def test_serve_and_assign_share_one_definition(option: str) -> None:
    serve, assign = _actions("serve")[option], _actions("assign")[option]
    assert (serve.help, serve.metavar, serve.default, type(serve)) == \
        (assign.help, assign.metavar, assign.default, type(assign))


def _assign(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "platpass", "assign", "/pl031@9010000", "--socket",
         str(tmp_path / "rtc.sock"), "--state-dir", str(tmp_path / "state"), *extra],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("user", ["0", "root", "65534:0"])
def test_dropping_to_root_is_refused_before_anything_is_touched(tmp_path: Path,
                                                                user: str) -> None:
    out = _assign(tmp_path, "--user", user)
    assert out.returncode == 1, out
    assert "refusing to 'drop'" in out.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "rtc.sock").exists()


def test_unknown_user_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    out = _assign(tmp_path, "--user", "no-such-user-platpass")
    assert out.returncode == 1 and "unknown user 'no-such-user-platpass'" in out.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("option", ["--allow-uid", "--allow-gid"])
def test_unknown_allowed_name_is_refused_before_anything_is_touched(tmp_path: Path,
                                                                    option: str) -> None:
    out = _assign(tmp_path, option, "no-such-name-platpass")
    assert out.returncode == 2 and "unknown user or group" in out.stderr, out
    assert not (tmp_path / "state").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the checks after the names need root")
def test_valid_options_reach_the_device_lookup(tmp_path: Path) -> None:
    """With good names the command goes on to the device (absent on this host), proving
    the options themselves are accepted as given."""
    out = _assign(tmp_path, "--user", "65534:65534", "--allow-uid", "0", "--control",
                  str(tmp_path / "c.ctl"), "--trace", str(tmp_path / "t.trace"))
    assert out.returncode == 1, out
    assert "no platform or AMBA device for DT node /pl031@9010000" in out.stderr
    assert not (tmp_path / "rtc.sock").exists() and not (tmp_path / "c.ctl").exists()
