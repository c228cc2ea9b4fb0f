"""Socket activation without systemd: ``platpass serve`` exec'd by a wrapper that sets
LISTEN_FDS/LISTEN_PID (its own pid, as systemd does) over an inherited listening socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from platpass.errors import OpsError
from platpass.ops import activation
from platpass.vfio_user.client import VfioUserClient

GPIO = "/soc@9000000/gpio@30000"
# dup2 the inherited sockets to 3.., set the variables for *this* pid, then exec.
WRAPPER = """
import os, sys
fds = [int(f) for f in sys.argv[1].split(",")]
for i, fd in enumerate(fds):
    os.dup2(fd, 3 + i)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_PID"] = str(os.getpid())
if sys.argv[2]:
    os.environ["LISTEN_FDNAMES"] = sys.argv[2]
os.execvp(sys.argv[3], sys.argv[3:])
"""


def _listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(4)
    os.set_inheritable(sock.fileno(), True)
    return sock


def _activate(listeners: list[socket.socket], names: str, *serve_args: str
              ) -> subprocess.Popen[str]:
    fds = [s.fileno() for s in listeners]
    proc = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, ",".join(map(str, fds)), names, sys.executable,
         "-m", "platpass", "serve", *serve_args],
        pass_fds=fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "ready":
            return proc
    raise AssertionError(f"serve did not start: {lines} {proc.stderr.read()}")  # type: ignore[union-attr]


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(10)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    return code


def test_serve_uses_the_passed_socket_and_leaves_it_to_the_manager(tmp_path: Path) -> None:
    path = tmp_path / "gpio.sock"
    listener = _listener(path)
    proc = _activate([listener], "", "--sim", GPIO)
    try:
        listener.close()  # only the server holds it now
        with VfioUserClient.connect(path) as client:
            assert client.read(0, 0xFE0, 4) == 0x61  # PL061 PeriphID0
            client.write(0, 0x400, 1, 0xFF)          # GPIODIR
            assert client.read(0, 0x400, 1) == 0xFF
    finally:
        assert _stop(proc) == 0
    assert path.is_socket()  # the service manager's socket: not ours to unlink


def test_passed_sockets_are_matched_to_devices_by_bound_path(tmp_path: Path) -> None:
    gpio, uart = _listener(tmp_path / "gpio@30000.sock"), _listener(tmp_path / "serial@0.sock")
    # Passed in the "wrong" order: matching is by the path each device would bind.
    proc = _activate([uart, gpio], "", "--sim", GPIO, "/soc@9000000/serial@0",
                     "--socket-dir", str(tmp_path))
    try:
        with VfioUserClient.connect(tmp_path / "gpio@30000.sock") as client:
            assert client.read(0, 0xFE0, 4) == 0x61
        with VfioUserClient.connect(tmp_path / "serial@0.sock") as client:
            assert client.read(0, 0xFE0, 4) == 0x11  # PL011 PeriphID0
    finally:
        assert _stop(proc) == 0
        gpio.close()
        uart.close()


def test_passed_socket_matched_by_fd_name(tmp_path: Path) -> None:
    listener = _listener(tmp_path / "anything.sock")
    proc = _activate([listener], "gpio@30000", "--sim", GPIO)
    try:
        with VfioUserClient.connect(tmp_path / "anything.sock") as client:
            assert client.read(0, 0xFE0, 4) == 0x61
    finally:
        assert _stop(proc) == 0
        listener.close()


def test_listen_fds_ignores_another_processes_fds_and_clears_the_variables() -> None:
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid() + 1)}
    assert activation.listen_fds(env) == []
    assert env == {}


def test_listen_fds_reads_names_and_paths(tmp_path: Path) -> None:
    sock = _listener(tmp_path / "a.sock")
    saved = os.dup(3) if _is_open(3) else None
    try:
        os.dup2(sock.fileno(), 3)
        env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "dev"}
        (passed,) = activation.listen_fds(env)
        assert passed == activation.InheritedSocket(3, "dev", str(tmp_path / "a.sock"))
        assert not os.get_inheritable(3)
        assert activation.match_inherited([passed], path=str(tmp_path / "a.sock"),
                                          name=None) == passed
        assert activation.match_inherited([passed], path=None, name="other") is None
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        sock.close()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize(("env", "message"), [
    ({"LISTEN_FDS": "x", "LISTEN_PID": "1"},
     "socket activation: LISTEN_PID='1' LISTEN_FDS='x' are not numbers"),
    ({"LISTEN_FDS": "2", "LISTEN_PID": "SELF", "LISTEN_FDNAMES": "a"},
     "socket activation: LISTEN_FDNAMES has 1 names for 2 fds"),
])
def test_malformed_activation_variables(env: dict[str, str], message: str) -> None:
    env = {k: str(os.getpid()) if v == "SELF" else v for k, v in env.items()}
    with pytest.raises(OpsError) as info:
        activation.listen_fds(env)
    assert str(info.value) == message


def test_notify_sends_ready_to_the_notify_socket(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify"))
        assert activation.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "notify")})
        assert manager.recv(64) == b"READY=1"
    assert not activation.notify("READY=1", {})
