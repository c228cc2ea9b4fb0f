"""The systemd units in contrib/systemd: they parse, name commands that exist, and pass
``systemd-analyze verify`` (with ExecStart pointed at the platpass this suite runs)."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from platpass.cli import build_parser

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
INSTALLED = "/usr/local/bin/platpass"


def _parse(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((UNITS / name).read_text())
    return parser


def test_service_runs_up_in_the_foreground_as_a_notify_service() -> None:
    unit = _parse("platpass@.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "mixed"  # release runs in the main process on SIGTERM
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == INSTALLED
    assert argv[1:] == ["up", "--foreground", "/etc/platpass/%i.toml"]
    # The arguments are ones our own parser accepts (with %i expanded).
    args = build_parser().parse_args([a.replace("%i", "lab") for a in argv[1:]])
    assert args.foreground and args.config == "/etc/platpass/lab.toml"
    check = shlex.split(service["ExecStartPre"])
    assert build_parser().parse_args([a.replace("%i", "lab") for a in check[1:]]).check


def test_socket_unit_feeds_the_service_a_named_listening_socket() -> None:
    unit = _parse("platpass@.socket")
    sock = unit["Socket"]
    assert sock["ListenStream"] == "/run/platpass/%i.sock"
    assert sock["Accept"] == "no"  # one listening socket handed over, not one per client
    assert sock["FileDescriptorName"] == "device0"
    assert sock["SocketMode"] == "0600"
    assert sock["Service"] == "platpass@%i.service"


def test_assign_unit_passes_the_unescaped_node_path() -> None:
    service = _parse("platpass-assign@.service")["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[1:3] == ["assign", "%f"] and "--foreground" in argv
    args = build_parser().parse_args(
        [a.replace("%f", "/soc/gpio@1000").replace("%i", "soc-gpio\\x401000")
         .replace("${PLATPASS_BACKEND}", "uio") for a in argv[1:]])
    assert args.node == "/soc/gpio@1000" and args.foreground and args.backend == "uio"


@pytest.mark.parametrize("instance", ["lab"])
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path, instance: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    platpass = shutil.which("platpass")
    assert platpass, "the platpass console script is not on PATH"
    names = []
    for template in ("platpass@.service", "platpass@.socket", "platpass-assign@.service"):
        name = template.replace("@.", f"@{instance}.")
        (tmp_path / name).write_text((UNITS / template).read_text().replace(INSTALLED,
                                                                            platpass))
        names.append(f"./{name}")
    result = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines()
                if "platpass" in line and ("Unknown" in line or "ignoring" in line
                                           or "not executable" in line or "Failed" in line)]
    assert result.returncode == 0, result.stderr
    assert problems == []
