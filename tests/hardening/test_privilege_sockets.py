"""Who may reach a device's socket: file owner/group/mode and the SO_PEERCRED allow-list.

The server runs in this (root) process; the other users are forked children that switch
to ``nobody`` (65534) before they connect. A refused peer must be closed before the server
reads a byte: the kernel proves it, because closing an AF_UNIX stream socket that still
holds unread data makes the peer's next receive fail with ECONNRESET (not end-of-file).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import shutil
import socket
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from platpass.drivers.registry import default_registry
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_user.client import VfioUserClient
from platpass.vfio_user.server import DeviceEndpoint, SocketOptions, VfioUserServer

NOBODY = 65534
NOGROUP = 65534
#: A VERSION request (header + major 0, minor 1, empty JSON): what a client sends first.
VERSION_REQUEST = struct.pack("=HHIIIHH", 1, 1, 16 + 4 + 3, 0, 0, 0, 1) + b"{}\0"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory ``nobody`` can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="platpass-sock-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def served(open_dir: Path) -> Iterator[Callable[[SocketOptions], DeviceEndpoint]]:
    """Serve the simulated PL031 at ``open_dir/rtc.sock`` with the given options."""
    reactor = EpollReactor()
    server = VfioUserServer(reactor)
    devices: list[VfioDevice] = []

    def serve(options: SocketOptions) -> DeviceEndpoint:
        node = next(n for n in load_board().devices() if "arm,pl031" in n.compatible)
        driver = default_registry().match(node.compatible)
        assert driver is not None
        device = VfioDevice(node, driver(node), open_sim_backend(node, reactor), reactor)
        devices.append(device)
        return server.serve("rtc", device, open_dir / "rtc.sock", options)

    yield serve
    server.close()
    for device in devices:
        device.close()
    reactor.close()


def become_nobody() -> None:
    os.setgroups([NOGROUP])
    os.setresgid(NOGROUP, NOGROUP, NOGROUP)
    os.setresuid(NOBODY, NOBODY, NOBODY)


class Child:
    """A forked child running ``body(send, wait)`` as nobody; ``send`` reports a step to
    the parent, ``wait`` blocks until the parent says go."""

    def __init__(self, body: Callable[[Callable[[dict], None], Callable[[], None]], dict]
                 ) -> None:
        up_r, up_w = os.pipe()
        down_r, down_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - runs in the child
            os.close(up_r)
            os.close(down_w)

            def send(message: dict) -> None:
                os.write(up_w, json.dumps(message).encode() + b"\n")

            def wait() -> None:
                os.read(down_r, 1)

            try:
                become_nobody()
                send({"final": body(send, wait)})
            except BaseException as err:
                send({"final": {"error": f"{type(err).__name__}: {err}"}})
            os._exit(0)
        os.close(up_w)
        os.close(down_r)
        self._up = os.fdopen(up_r)
        self._down = down_w

    def next(self, reactor: EpollReactor | None, timeout: float = 20) -> dict:
        """The child's next report, running ``reactor`` meanwhile (if given)."""
        for _ in range(int(timeout / 0.01)):
            if select.select([self._up], [], [], 0 if reactor else 0.01)[0]:
                return json.loads(self._up.readline())
            if reactor is not None:
                reactor.run_once(0.01)
        raise AssertionError("the child did not report")

    def go(self) -> None:
        os.write(self._down, b"g")

    def finish(self, reactor: EpollReactor | None) -> dict:
        report = self.next(reactor)
        os.waitpid(self.pid, 0)
        self._up.close()
        os.close(self._down)
        return report["final"]


# ---------------------------------------------------------------- the socket file

@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666, 0o640, 0o400])
def test_socket_file_has_exactly_the_requested_mode_owner_group(
        served: Callable[[SocketOptions], DeviceEndpoint], open_dir: Path, mode: int) -> None:
    served(SocketOptions(mode=mode, owner=NOBODY, group=NOGROUP))
    st = os.lstat(open_dir / "rtc.sock")
    assert stat.S_ISSOCK(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, NOBODY, NOGROUP)


def test_default_socket_is_root_only(served: Callable[[SocketOptions], DeviceEndpoint],
                                     open_dir: Path) -> None:
    endpoint = served(SocketOptions())
    st = os.lstat(open_dir / "rtc.sock")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    path = str(open_dir / "rtc.sock")

    def body(send: Callable[[dict], None], wait: Callable[[], None]) -> dict:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as err:
            return {"errno": err.errno}
        return {"connected": True}

    child = Child(body)
    assert child.finish(endpoint.server.reactor) == {"errno": errno.EACCES}
    assert endpoint.refused == 0 and endpoint.client is None  # never even reached accept


def test_the_name_appears_only_with_the_final_mode_owner_and_group(
        served: Callable[[SocketOptions], DeviceEndpoint], open_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The public name is created by one link() of a socket that already listens with
    exactly the requested permissions: nothing is ever chmod'ed or chown'ed by name in a
    directory another user may write."""
    steps: list[tuple[int, int, int]] = []
    real_link = os.link

    def link(src: str, dst: str, **kwargs: int) -> None:
        st = os.stat(src, dir_fd=kwargs["src_dir_fd"], follow_symlinks=False)
        steps.append((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid))
        assert not (open_dir / dst).exists()
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", link)
    served(SocketOptions(mode=0o660, owner=NOBODY, group=NOGROUP))
    monkeypatch.undo()
    assert steps == [(0o660, NOBODY, NOGROUP)]
    st = os.lstat(open_dir / "rtc.sock")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, NOBODY, NOGROUP)
    assert sorted(p.name for p in open_dir.iterdir()) == ["rtc.sock"]  # no private dir left


def test_serve_takes_owner_and_group_by_name_or_number(open_dir: Path) -> None:
    for owner, group in (("nobody", "nogroup"), ("65534", "65534")):
        path = open_dir / f"rtc-{owner}.sock"
        errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 - read if serve fails
        proc = subprocess.Popen(
            [sys.executable, "-m", "platpass", "serve", "--sim", "/soc@9000000/rtc@20000",
             "--socket", str(path), "--mode", "0660", "--owner", owner, "--group", group],
            stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            assert proc.stdout is not None
            lines = []
            while (line := proc.stdout.readline()) and line.strip() != "ready":
                lines.append(line)
            errors.seek(0)
            assert line.strip() == "ready", (lines, errors.read())
            st = os.lstat(path)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o660, NOBODY, NOGROUP)
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
            errors.close()


# ---------------------------------------------------------------- the allow-list

def test_peer_not_on_the_allow_list_is_closed_before_any_byte_is_read(
        served: Callable[[SocketOptions], DeviceEndpoint], open_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # World-connectable file, so only the SO_PEERCRED check stands between nobody and it.
    endpoint = served(SocketOptions(mode=0o666, allow_uids=frozenset({4242}),
                                    allow_gids=frozenset({4343})))
    path = str(open_dir / "rtc.sock")

    def body(send: Callable[[dict], None], wait: Callable[[], None]) -> dict:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)  # completes in the backlog, before the server accepts
        sock.sendall(VERSION_REQUEST)
        send({"sent": True})
        wait()
        sock.settimeout(10)
        try:
            data = sock.recv(64)
        except OSError as err:
            return {"errno": err.errno}
        return {"data": data.hex()}

    caplog.set_level(logging.WARNING, logger="platpass.vfio_user.server")
    child = Child(body)
    assert child.next(None) == {"sent": True}
    reactor = endpoint.server.reactor
    assert reactor.run_until(lambda: endpoint.refused == 1, timeout=10)
    assert endpoint.client is None and endpoint.server.clients == ()
    child.go()
    # ECONNRESET: the server closed its end with the VERSION still unread in its queue.
    assert child.finish(reactor) == {"errno": errno.ECONNRESET}
    assert f"uid {NOBODY} gid {NOGROUP} (not allowed)" in caplog.text


@pytest.mark.parametrize("allowed", [
    SocketOptions(mode=0o666, allow_uids=frozenset({NOBODY})),
    SocketOptions(mode=0o666, allow_uids=frozenset({4242}), allow_gids=frozenset({NOGROUP})),
    SocketOptions(mode=0o600, owner=NOBODY),  # no list: the file's owner is enough
], ids=["by-uid", "by-gid", "by-file-owner"])
def test_allowed_peer_uses_the_device(served: Callable[[SocketOptions], DeviceEndpoint],
                                      open_dir: Path, allowed: SocketOptions) -> None:
    endpoint = served(allowed)
    path = str(open_dir / "rtc.sock")

    def body(send: Callable[[dict], None], wait: Callable[[], None]) -> dict:
        with VfioUserClient.connect(path) as client:
            client.write(0, 0x08, 4, 777)  # RTCLR
            return {"id0": client.read(0, 0xFE0, 4), "count": client.read(0, 0x00, 4),
                    "uid": os.getuid()}

    result = Child(body).finish(endpoint.server.reactor)
    assert result["uid"] == NOBODY and result["id0"] == 0x31
    assert 777 <= result["count"] <= 780
    assert endpoint.refused == 0
