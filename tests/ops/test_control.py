"""The control socket protocol itself: bounded requests, refusals as JSON errors, a silent
peer dropped, and ``serve --control`` reporting refused clients."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from platpass.errors import OpsError
from platpass.ops import control as control_module
from platpass.ops.control import ControlServer, idle_status, query
from platpass.reactor import EpollReactor
from platpass.vfio_user.client import VfioUserClient
from platpass.vfio_user.server import VfioUserServer


@pytest.fixture
def served(tmp_path: Path):
    reactor = EpollReactor()
    server = VfioUserServer(reactor)
    ctl = ControlServer(reactor, server, tmp_path / "ctl", name="t")
    yield reactor, ctl
    ctl.close()
    server.close()
    reactor.close()


def _ask(reactor: EpollReactor, path: Path, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(data)
        sock.setblocking(False)
        chunks: list[bytes] = []
        for _ in range(200):  # the server's loop runs here, in this thread
            reactor.run_once(0.01)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            chunks.append(chunk)
        else:
            raise AssertionError("no complete reply")
    return json.loads(b"".join(chunks))


def test_requests_are_answered_or_refused_as_json(served, tmp_path: Path) -> None:
    reactor, _ctl = served
    assert (tmp_path / "ctl").stat().st_mode & 0o777 == 0o600
    reply = _ask(reactor, tmp_path / "ctl", b'{"request": "status"}\n')
    assert reply["ok"] and reply["status"]["name"] == "t" and reply["status"]["devices"] == []
    assert _ask(reactor, tmp_path / "ctl", b'{"request": "reboot"}\n') == {
        "ok": False, "error": "unknown request 'reboot' (known: status)"}
    assert _ask(reactor, tmp_path / "ctl", b"[1, 2]\n") == {
        "ok": False, "error": "a request is a JSON object with a 'request' string"}
    assert _ask(reactor, tmp_path / "ctl", b"{nope\n")["error"].startswith(
        "request is not JSON: ")
    assert _ask(reactor, tmp_path / "ctl", b"x" * 5000) == {
        "ok": False, "error": "request over 4096 bytes"}


def test_a_silent_peer_is_dropped(served, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    reactor, ctl = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        monkeypatch.setattr(control_module, "REQUEST_TIMEOUT", 0.05)
        sock.connect(str(tmp_path / "ctl"))
        reactor.run_until(lambda: ctl.pending > 0, 2.0)
        assert reactor.run_until(lambda: ctl.pending == 0, 2.0)
        assert sock.recv(10) == b""  # closed without a reply


def test_query_reports_a_refused_request(tmp_path: Path) -> None:
    with pytest.raises(OpsError, match="no answer from the server"):
        query(tmp_path / "nothing")


def test_serve_control_counts_refused_second_clients(tmp_path: Path) -> None:
    sock, ctl = tmp_path / "rtc.sock", tmp_path / ".control"
    proc = subprocess.Popen([sys.executable, "-m", "platpass", "serve", "--sim",
                             "/soc@9000000/watchdog@40000", "--socket", str(sock),
                             "--control", str(ctl)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "ready":
                break
        with VfioUserClient.connect(sock) as client:
            client.read(0, 0xFE0, 4)
            with pytest.raises(Exception):  # noqa: B017 - the server closes it at once
                VfioUserClient.connect(sock, timeout=5)
            (device,) = query(ctl)["devices"]
            assert device["refused_clients"] == 1 and device["client"] is not None
            assert device["socket"] == str(sock)
            # a device nobody serves at the moment (serve --workers) has the same shape
            assert list(idle_status("n", [], "s")) == list(device)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert not ctl.exists()


def test_a_forked_child_that_forgets_the_server_never_holds_a_status_client(
        tmp_path: Path) -> None:
    """serve --workers forks a worker from the supervisor at any moment, possibly while a
    status connection is accepted and not yet answered. The client reads to EOF; without
    ``forget`` the child's copy of that connection kept it waiting until the child exited
    (seen as a 5 s status timeout in CI under load)."""
    import os
    import time

    reactor = EpollReactor()
    server = ControlServer(reactor, VfioUserServer(reactor), tmp_path / "ctl")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "ctl"))
    reactor.run_once(0.5)  # accepted, the request not yet sent
    assert server.pending == 1
    pid = os.fork()
    if pid == 0:  # the "worker": forgets, then outlives the answer by far
        server.forget()
        time.sleep(5)
        os._exit(0)
    try:
        client.sendall(b'{"request": "status"}\n')
        client.setblocking(False)
        deadline = time.monotonic() + 3
        reply = b""
        while time.monotonic() < deadline:
            reactor.run_once(0.05)
            try:
                chunk = client.recv(1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                break  # EOF: nobody else holds the connection
            reply += chunk
        else:
            pytest.fail("no EOF within 3 s: the child still holds the status connection")
        assert "devices" in json.loads(reply)["status"]
    finally:
        client.close()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        server.close()
        reactor.close()
