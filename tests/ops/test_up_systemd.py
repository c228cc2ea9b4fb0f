"""``platpass up --foreground`` as systemd runs it: passed sockets, READY=1, a failed start
rolled back, a service-wide trace, and the commands used for uio/vfio devices."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from platpass.errors import ConfigError
from platpass.host.simulated.board import board_dts_path
from platpass.ops.config import load_config, parse_config
from platpass.ops.service import assign_command, plan, release_command
from platpass.ops.trace import read_trace
from platpass.vfio_user.client import VfioUserClient

GPIO = "/soc@9000000/gpio@30000"
WRAPPER = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = "device0"
os.execvp(sys.argv[2], sys.argv[2:])
"""


def test_up_foreground_takes_the_socket_unit_socket_and_notifies_ready(tmp_path: Path
                                                                      ) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(f'[service]\nrun_dir = "{tmp_path}/run"\ntrace = "{tmp_path}/t"\n'
                      f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\n'
                      f'socket = "{tmp_path}/lab.sock"\n')
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "lab.sock"))
    listener.listen(4)
    os.set_inheritable(listener.fileno(), True)
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "notify"))
    manager.settimeout(30)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(listener.fileno()), sys.executable, "-m",
         "platpass", "up", "--foreground", str(config)],
        pass_fds=(listener.fileno(),), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}, text=True)
    try:
        assert manager.recv(64) == b"READY=1"
        listener.close()
        with VfioUserClient.connect(tmp_path / "lab.sock") as client:
            assert client.read(0, 0xFE0, 4) == 0x61
            client.write(0, 0x400, 1, 0x3C)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, proc.stderr.read()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        assert manager.recv(64) == b"STOPPING=1"
        manager.close()
    assert (tmp_path / "lab.sock").is_socket()  # systemd's socket stays
    assert not (tmp_path / "run" / "lab.ctl").exists()
    assert not (tmp_path / "run" / "lab.pid").exists()
    writes = [(r["offset"], r["value"]) for r in read_trace(tmp_path / "t")
              if r["event"] == "write"]
    assert writes == [(0x400, 0x3C)]


def test_a_failed_start_is_rolled_back(tmp_path: Path) -> None:
    """The second device has no simulated model: the first, already listening, is closed
    and its socket removed; no pid file, no control socket."""
    dts = tmp_path / "board.dts"
    dts.write_text(board_dts_path().read_text().replace('compatible = "arm,pl031";',
                                                        'compatible = "arm,sbsa-uart";'))
    config = tmp_path / "lab.toml"
    config.write_text(f'[service]\nrun_dir = "{tmp_path}/run"\n'
                      f'[[device]]\nnode = "{GPIO}"\nsource = "dts"\nfirmware = "{dts}"\n'
                      f'backend = "sim"\nsocket = "{tmp_path}/gpio.sock"\n'
                      f'[[device]]\nnode = "/soc@9000000/rtc@20000"\nsource = "dts"\n'
                      f'firmware = "{dts}"\nbackend = "sim"\nsocket = "{tmp_path}/uart.sock"\n')
    plan(load_config(config))  # valid: both nodes are assignable
    result = subprocess.run([sys.executable, "-m", "platpass", "up", "--foreground",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "platpass: error: /soc@9000000/rtc@20000: no simulated model for compatible "
        "['arm,sbsa-uart']")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.dts", "lab.toml"]


def test_kernel_devices_go_through_assign_and_release(tmp_path: Path,
                                                      qemu_virt_dtb: Path) -> None:
    config = parse_config(f'[[device]]\nnode = "/pl031@9010000"\nsource = "dtb"\n'
                          f'firmware = "{qemu_virt_dtb}"\nbackend = "vfio"\n'
                          f'socket = "{tmp_path}/rtc.sock"\nmode = "0660"\n',
                          tmp_path / "k.toml")
    (device,) = config.devices
    assert device.kernel
    assert assign_command(device) == [
        sys.executable, "-m", "platpass", "assign", "/pl031@9010000", "--backend", "vfio",
        "--socket", f"{tmp_path}/rtc.sock", "--mode", "660", "--dtb", str(qemu_virt_dtb)]
    assert release_command(device) == [sys.executable, "-m", "platpass", "release",
                                       "/pl031@9010000"]
    (planned,) = plan(config)  # judged on the dtb: assignable, nothing bound
    assert planned.export.node.path == "/pl031@9010000"
    # The PL061 is the power button's bank on QEMU virt (gpio-keys): up refuses it with
    # the host-use evidence before anything is started.
    refused = parse_config(f'[[device]]\nnode = "/pl061@9030000"\nsource = "dtb"\n'
                           f'firmware = "{qemu_virt_dtb}"\nbackend = "vfio"\n'
                           f'socket = "{tmp_path}/gpio.sock"\n', tmp_path / "g.toml")
    with pytest.raises(ConfigError, match="REFUSED_HOST_IN_USE: host-consumer: "
                                          "/gpio-keys/poweroff gpios -> /pl061@9030000"):
        plan(refused)


def test_check_does_not_probe_sockets_systemd_already_holds(tmp_path: Path) -> None:
    """ExecStartPre=up --check runs while platpass@.socket listens on the device's path;
    a plain ``up`` (nothing passed) refuses the same path."""
    config = tmp_path / "lab.toml"
    config.write_text(f'[service]\nrun_dir = "{tmp_path}/run"\n'
                      f'[[device]]\nnode = "{GPIO}"\nsource = "sim"\n'
                      f'socket = "{tmp_path}/lab.sock"\n')
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
        held.bind(str(tmp_path / "lab.sock"))
        held.listen(1)
        check = subprocess.run([sys.executable, "-m", "platpass", "up", "--check",
                                str(config)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        assert check.stdout == f"{config}: 1 devices, valid\n"
        up = subprocess.run([sys.executable, "-m", "platpass", "up", str(config)],
                            capture_output=True, text=True, timeout=60)
        assert up.returncode == 1
        assert up.stderr == (f"platpass: error: {config}: device[0].socket: "
                             f"{tmp_path}/lab.sock is in use by a running server\n")
