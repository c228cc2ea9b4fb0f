"""``platpass up``/``down`` on the simulated board, and ``platpass status`` over the control
socket: a connected client (pid/uid from SO_PEERCRED) and counters that move."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from platpass.host.simulated.board import board_dts_path
from platpass.ops.config import load_config
from platpass.ops.control import query
from platpass.vfio_device.uapi import IrqSetFlags as F
from platpass.vfio_user.client import VfioUserClient

GPIO, UART = "/soc@9000000/gpio@30000", "/soc@9000000/serial@0"


def platpass(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "platpass", *args], capture_output=True,
                            text=True, timeout=60)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "lab.toml"
    path.write_text(f"""
[service]
run_dir = "{tmp_path}/run"
log_format = "json"

[[device]]
node = "{GPIO}"
source = "sim"
socket = "{tmp_path}/gpio.sock"
guest_address = 0x9030000
guest_spis = [7]

[[device]]
node = "{UART}"
source = "sim"
socket = "{tmp_path}/uart.sock"
mode = "0660"
dma = "deny"
""")
    yield path
    platpass("down", str(path), check=False)


def test_up_serves_every_device_and_down_removes_everything(lab: Path) -> None:
    tmp = lab.parent
    out = platpass("up", str(lab)).stdout
    assert out.startswith("up: lab (server pid ")
    config = load_config(lab)
    pid = int(config.pid_path.read_text())
    assert (tmp / "gpio.sock").stat().st_mode & 0o777 == 0o600
    assert (tmp / "uart.sock").stat().st_mode & 0o777 == 0o660
    assert config.control_path.stat().st_mode & 0o777 == 0o600
    with VfioUserClient.connect(tmp / "gpio.sock") as client:
        assert client.read(0, 0xFE0, 4) == 0x61
    with VfioUserClient.connect(tmp / "uart.sock") as client:
        assert client.read(0, 0xFE0, 4) == 0x11
    # A second up of the same file is refused and disturbs nothing.
    again = platpass("up", str(lab), check=False)
    assert again.returncode == 1
    assert f"{tmp}/gpio.sock is in use by a running server" in again.stderr
    assert "service 'lab' is already up" in again.stderr
    assert platpass("down", str(lab)).stdout == "down: lab\n"
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    assert sorted(p.name for p in tmp.iterdir()) == ["lab.toml", "run"]
    assert sorted(p.name for p in (tmp / "run").iterdir()) == ["lab.log"]
    logs = [json.loads(line) for line in (tmp / "run" / "lab.log").read_text().splitlines()
            if line.startswith("{")]
    # (The refused second ``up`` probed the sockets too, from its own pid.)
    ours = [r for r in logs if r.get("event") == "connected" and r["pid"] == os.getpid()]
    assert {r["device"] for r in ours} == {GPIO, UART}
    assert all(r["uid"] == os.getuid() and r["level"] == "info" for r in ours)
    assert platpass("down", str(lab)).stdout == "down: lab (was not running)\n"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_status_shows_the_client_and_counters_that_move(lab: Path) -> None:
    tmp = lab.parent
    platpass("up", str(lab))
    control = load_config(lab).control_path
    with VfioUserClient.connect(tmp / "gpio.sock") as client:
        before = {d["name"]: d for d in query(control)["devices"]}
        gpio = before[GPIO]
        assert gpio["client"] == {"pid": os.getpid(), "uid": os.getuid(),
                                  "gid": os.getgid()}
        assert before[UART]["client"] is None
        assert gpio["guest_address"] == 0x9030000 and gpio["guest_spis"] == [7]
        assert before[UART]["dma"] == "deny"
        # Accesses through the trapped registers (GPIOIC, GPIORIS are trapped by the
        # PL061 driver) and an interrupt loopback.
        reads, writes = gpio["trapped_reads"], gpio["trapped_writes"]
        client.read(0, 0x414, 1)             # RIS
        client.write(0, 0x41C, 1, 0x01)      # IC
        trigger = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            client.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, fds=[trigger])
            client.set_irqs(0, F.DATA_NONE | F.ACTION_TRIGGER)  # loopback
            assert os.eventfd_read(trigger) == 1
            after = {d["name"]: d for d in query(control)["devices"]}[GPIO]
        finally:
            os.close(trigger)
        assert after["trapped_reads"] + after["backend_reads"] == \
            reads + gpio["backend_reads"] + 1
        assert after["trapped_writes"] + after["backend_writes"] == \
            writes + gpio["backend_writes"] + 1
        (irq,) = after["irqs"]
        assert (irq["delivered"], irq["masked"], irq["trigger"]) == (1, True, True)
        text = platpass("status", str(lab)).stdout
        assert f"{GPIO} on {tmp}/gpio.sock: client pid {os.getpid()} uid {os.getuid()}" in text
        assert "irq 0 (level, masked): fired 0 delivered 1" in text
        as_json = json.loads(platpass("status", "--json", "--control", str(control)).stdout)
        (server,) = as_json["servers"]
        assert server["name"] == "lab" and len(server["devices"]) == 2
    after_close = {d["name"]: d for d in query(control)["devices"]}[GPIO]
    assert after_close["client"] is None


def test_status_errors(tmp_path: Path) -> None:
    result = platpass("status", "--run-dir", str(tmp_path), check=False)
    assert result.returncode == 1
    assert result.stderr == f"platpass status: no control socket under {tmp_path} (nothing " \
        "is up)\n"
    result = platpass("status", "--control", str(tmp_path / "none.ctl"), check=False)
    assert result.returncode == 1
    assert f"{tmp_path}/none.ctl: no answer from the server" in result.stderr


def test_down_after_the_server_was_killed_cleans_up(lab: Path) -> None:
    tmp = lab.parent
    platpass("up", str(lab))
    config = load_config(lab)
    pid = int(config.pid_path.read_text())
    os.kill(pid, signal.SIGKILL)
    for _ in range(200):
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            break
        time.sleep(0.01)
    assert (tmp / "gpio.sock").is_socket()  # left behind by the dead server
    assert platpass("down", str(lab)).stdout == "down: lab (was not running)\n"
    assert sorted(p.name for p in tmp.iterdir()) == ["lab.toml", "run"]
    assert sorted(p.name for p in (tmp / "run").iterdir()) == ["lab.log"]
    # And it comes up again on the same paths.
    platpass("up", str(lab))
    with VfioUserClient.connect(tmp / "gpio.sock") as client:
        assert client.read(0, 0xFE0, 4) == 0x61


def test_up_serves_unprivileged_and_cleans_up_as_root(tmp_path: Path) -> None:
    """``user = "nobody"``: the serving child runs as nobody with no capabilities; the
    parent (the recorded pid) keeps root, and removes the root-owned sockets at down."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    path = tmp_path / "lab.toml"
    path.write_text(f'[service]\nrun_dir = "{tmp_path}/run"\nuser = "nobody"\n'
                    f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\n'
                    f'socket = "{tmp_path}/gpio.sock"\n')
    try:
        platpass("up", str(path))
        config = load_config(path)
        parent = int(config.pid_path.read_text())
        with VfioUserClient.connect(tmp_path / "gpio.sock") as client:
            assert client.read(0, 0xFE0, 4) == 0x61
            status = query(config.control_path)
        child = status["pid"]
        assert child != parent
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{child}/status").read_text().splitlines())
        assert fields["Uid"].split()[0] == str(config.user.uid)
        assert int(fields["CapEff"], 16) == 0 and fields["NoNewPrivs"].strip() == "1"
        assert Path(f"/proc/{parent}/status").read_text().count("Uid:\t0\t") == 1
        assert platpass("down", str(path)).stdout == "down: lab\n"
    finally:
        platpass("down", str(path), check=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.toml", "run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["lab.log"]


def test_an_unknown_service_user_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(f'[service]\nuser = "no-such-user-pp"\n[[device]]\nnode = "{GPIO}"\n'
                    f'source = "sim"\nsocket = "{tmp_path}/gpio.sock"\n')
    result = platpass("up", "--check", str(path), check=False)
    assert result.returncode == 1
    assert result.stderr == (f"platpass: error: {path}: service.user: unknown user "
                             "'no-such-user-pp'\n")


def test_up_serves_a_device_as_pci_function(tmp_path: Path) -> None:
    board = board_dts_path("sim-pci-uart.dts")
    path = tmp_path / "pci.toml"
    path.write_text(f"""
[service]
run_dir = "{tmp_path}/run"

[[device]]
node = "/soc@9000000/serial@50000"
source = "dts"
firmware = "{board}"
backend = "sim"
socket = "{tmp_path}/uart.sock"
pci = "auto"
""")
    try:
        platpass("up", str(path))
        with VfioUserClient.connect(tmp_path / "uart.sock") as client:
            info = client.device_info()
            assert info.flags & 0x2 and (info.num_regions, info.num_irqs) == (9, 5)  # PCI
            assert client.read(7, 0, 4) == 0x0101115D      # config space: 115d:0101
            assert client.irq_info(0).count == 1 and client.irq_info(1).count == 0
    finally:
        platpass("down", str(path), check=False)
