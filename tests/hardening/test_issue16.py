"""Regression tests for issue 16 (hardening, second pass), items 2-8 and "Also".

Each test names the item it reproduces; each failed before its fix.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_helpers import open_fds, sim_device

from platpass.reactor import EpollReactor
from platpass.vfio_user.fuzz import NEGOTIATE
from platpass.vfio_user.protocol import messages as m
from platpass.vfio_user.protocol.header import HEADER_SIZE, Command, Header
from platpass.vfio_user.server import DeviceEndpoint, VfioUserServer


@pytest.fixture
def reactor() -> Iterator[EpollReactor]:
    loop = EpollReactor()
    yield loop
    loop.close()


@pytest.fixture
def two_devices(reactor: EpollReactor, tmp_path: Path
                ) -> Iterator[tuple[VfioUserServer, DeviceEndpoint, DeviceEndpoint]]:
    server = VfioUserServer(reactor)
    rtc = sim_device(reactor, "arm,pl031")
    gpio = sim_device(reactor, "arm,pl061")
    a = server.serve("rtc", rtc, tmp_path / "rtc.sock")
    b = server.serve("gpio", gpio, tmp_path / "gpio.sock")
    yield server, a, b
    server.close()
    rtc.close()
    gpio.close()


def _connect(reactor: EpollReactor, endpoint: DeviceEndpoint) -> socket.socket:
    """A negotiated client socket of ``endpoint``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(endpoint.path))
    sock.settimeout(2.0)
    body = NEGOTIATE.encode()
    sock.sendall(Header(0, Command.VERSION, HEADER_SIZE + len(body), 0).encode() + body)
    assert reactor.run_until(
        lambda: endpoint.client is not None and endpoint.client.session.negotiated, 2.0)
    _recv_message(reactor, sock)
    return sock


def _recv_message(reactor: EpollReactor, sock: socket.socket) -> tuple[Header, bytes]:
    sock.setblocking(False)
    data = b""
    try:
        for _ in range(400):
            reactor.run_once(0.005)
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise ConnectionResetError("closed")
            data += chunk
            if len(data) >= HEADER_SIZE and len(data) >= struct.unpack_from("=I", data, 4)[0]:
                return Header.decode(data[:HEADER_SIZE]), data[HEADER_SIZE:]
        raise AssertionError("no reply")
    finally:
        sock.settimeout(2.0)


def _read_reg(reactor: EpollReactor, sock: socket.socket, msg_id: int) -> Header:
    payload = m.RegionRead(0, 0, 4).encode()
    sock.sendall(Header(msg_id, Command.REGION_READ, HEADER_SIZE + len(payload), 0).encode()
                 + payload)
    header, _ = _recv_message(reactor, sock)
    return header


def _closed_by_server(reactor: EpollReactor, sock: socket.socket) -> bool:
    sock.setblocking(False)
    for _ in range(200):
        reactor.run_once(0.005)
        try:
            if sock.recv(65536) == b"":
                return True
        except BlockingIOError:
            continue
        except ConnectionResetError:
            return True
    return False


# ---------------------------------------------------------------- item 2: fd exhaustion

def test_item2_fds_on_unfinished_message_are_bounded_and_the_client_dropped(
        reactor: EpollReactor, two_devices: Any) -> None:
    """1-byte chunks each carrying 8 eventfds of a message that never completes: the
    server held every one of them until RLIMIT_NOFILE. Now it holds at most two
    messages' worth, closes them and drops that client; the other device still answers."""
    _server, a, b = two_devices
    other = _connect(reactor, b)
    baseline = len(open_fds())
    hostile = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hostile.connect(str(a.path))
    reactor.run_until(lambda: a.client is not None, 2.0)
    header = Header(1, Command.DEVICE_SET_IRQS, 4096, 0).encode()
    peak = 0
    try:
        hostile.send(header[:1])
        for i in range(1, 64):
            evs = [os.eventfd(0) for _ in range(8)]
            try:
                hostile.sendmsg([header[i % HEADER_SIZE:i % HEADER_SIZE + 1] or b"\0"],
                                [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                  struct.pack("=8i", *evs))])
            except OSError:
                break  # the server dropped us
            finally:
                for fd in evs:
                    os.close(fd)
            reactor.run_once(0.01)
            peak = max(peak, len(open_fds()) - baseline)
        assert _closed_by_server(reactor, hostile)
    finally:
        hostile.close()
    assert peak <= 2 * 8 + 2  # (two messages' worth, plus the connection itself)
    reactor.run_until(lambda: a.client is None, 2.0)
    assert len(open_fds()) <= baseline
    assert not _read_reg(reactor, other, 7).is_error
    other.close()


def test_item2_fds_inside_a_skipped_oversized_message_are_closed_at_once() -> None:
    from platpass.vfio_user.protocol.connection import NEED_DATA, Connection, Rejected

    conn = Connection(max_message_size=64, max_fds=8)
    big = Header(4, Command.REGION_WRITE, 1 << 20, 0).encode()
    conn.receive_data(big)
    assert isinstance(conn.next_event(), Rejected)
    for _ in range(50):
        evs = [os.eventfd(0) for _ in range(8)]
        conn.receive_data(b"\0", evs)
        assert conn.next_event() is NEED_DATA
        for fd in evs:
            with pytest.raises(OSError):
                os.fstat(fd)  # closed by the framer, not held to the end of the body
    assert conn.held_fds == 0


def test_item2_codec_caps_fds_held_whatever_the_pull_cadence() -> None:
    from platpass.errors import RemoteProtocolError
    from platpass.vfio_user.protocol.connection import Connection, State

    conn = Connection(max_fds=2)
    wire = Header(1, Command.DEVICE_SET_IRQS, 100, 0).encode()
    sent: list[int] = []
    for i in range(4):  # never pulling events in between
        evs = [os.eventfd(0) for _ in range(2)]
        sent += evs
        conn.receive_data(wire[i:i + 1], evs)
    assert conn.state is State.ERROR and conn.held_fds == 0
    for fd in sent:
        with pytest.raises(OSError):
            os.fstat(fd)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.errno == errno.EMFILE


class _FailingAccept:
    """A listening socket whose accept() fails with ``err`` (the process is out of fds)."""

    def __init__(self, sock: socket.socket, err: int) -> None:
        self._sock = sock
        self.err = err
        self.calls = 0

    def accept(self) -> Any:
        self.calls += 1
        if self.err:
            raise OSError(self.err, os.strerror(self.err))
        return self._sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_item2_accept_failure_backs_off_instead_of_spinning(
        reactor: EpollReactor, two_devices: Any, caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE on accept left the listening socket readable and the loop retried (and
    logged) at full speed. Now accepting pauses (one warning), other clients are served,
    and accepting resumes once fds are available."""
    _server, a, b = two_devices
    other = _connect(reactor, b)
    failing = _FailingAccept(a.sock, errno.EMFILE)
    a.sock = failing  # type: ignore[assignment]
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(str(a.path))  # stays in the backlog: the socket stays readable
    with caplog.at_level("WARNING", logger="platpass"):
        for i in range(50):
            reactor.run_once(0)
            if i % 10 == 0:
                assert not _read_reg(reactor, other, 100 + i).is_error
    assert failing.calls <= 3
    assert len([r for r in caplog.records if "accept failed" in r.getMessage()]) == 1
    failing.err = 0
    assert reactor.run_until(lambda: a.client is not None, 5.0)
    waiting.close()
    other.close()


def test_item2_control_socket_bounds_waiting_connections_and_backs_off(
        reactor: EpollReactor, two_devices: Any, tmp_path: Path) -> None:
    """Same class in the control socket: every connection was kept (with an fd) until
    its request came or 5 s passed, and an accept failure was retried in a hot loop."""
    from platpass.ops.control import MAX_PENDING, ControlServer

    server, _a, _b = two_devices
    control = ControlServer(reactor, server, tmp_path / "control")
    peers = []
    try:
        for _ in range(MAX_PENDING + 10):
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(str(tmp_path / "control"))
            peers.append(peer)
            reactor.run_once(0.01)
        for _ in range(10):
            reactor.run_once(0.01)
        assert control.pending == MAX_PENDING
        failing = _FailingAccept(control.sock, errno.EMFILE)
        control.sock = failing  # type: ignore[assignment]
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.connect(str(tmp_path / "control"))
        peers.append(extra)
        for _ in range(30):
            reactor.run_once(0)
        assert failing.calls <= 3
        control.sock = failing._sock
    finally:
        for peer in peers:
            peer.close()
        control.close()


# ---------------------------------------------------------------- item 6: churn

@pytest.mark.parametrize("last_words", [b"", b"write"])
def test_item6_client_right_after_the_previous_one_left_is_not_refused(
        reactor: EpollReactor, two_devices: Any, last_words: bytes) -> None:
    """The previous client closed (its EOF, and maybe its last message, unread) and the
    next one connected before the loop ran; when the listening socket is judged first the
    new client was refused as a "second client". Now the closed peer is settled first
    (and its last message still takes effect)."""
    _server, a, _b = two_devices
    for round_ in range(20):
        first = _connect(reactor, a)
        if last_words:
            payload = m.RegionWrite(0x8, 0, 4, round_.to_bytes(4, "little")).encode()  # RTC LR
            first.sendall(Header(3, Command.REGION_WRITE, HEADER_SIZE + len(payload),
                                 0).encode() + payload)
        first.close()
        second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        second.connect(str(a.path))
        refused = a.refused
        a.on_acceptable()  # the listening socket dispatched before the old client's EOF
        assert a.refused == refused and a.client is not None
        assert a.client.sock.getpeername() == second.getsockname()
        second.close()
        reactor.run_until(lambda: a.client is None, 2.0)


def test_item6_a_live_second_client_is_still_refused(
        reactor: EpollReactor, two_devices: Any) -> None:
    _server, a, _b = two_devices
    first = _connect(reactor, a)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.connect(str(a.path))
    refused = a.refused
    a.on_acceptable()
    assert a.refused == refused + 1
    assert not _read_reg(reactor, first, 5).is_error
    second.close()
    first.close()


# ---------------------------------------------------------------- item 3: trace/log failures

def _serve_limited(tmp_path: Path, src: str, fsize: int, *extra: str) -> Any:
    """``platpass serve --sim`` whose files may not grow past ``fsize`` bytes (writes beyond
    fail with EFBIG: a full filesystem without needing a mount)."""
    import resource
    import signal
    import subprocess
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = dict(os.environ, PYTHONPATH=src)
    proc = subprocess.Popen(
        [sys.executable, "-m", "platpass", "serve", "--sim", "--socket",
         str(tmp_path / "rtc.sock"), "/soc@9000000/rtc@20000", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=limit)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise AssertionError(proc.communicate(timeout=10))


def _blocking_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.connect(str(path))
    body = NEGOTIATE.encode()
    sock.sendall(Header(0, Command.VERSION, HEADER_SIZE + len(body), 0).encode() + body)
    _blocking_reply(sock)
    return sock


def _blocking_reply(sock: socket.socket) -> tuple[Header, bytes]:
    data = b""
    while len(data) < HEADER_SIZE or len(data) < struct.unpack_from("=I", data, 4)[0]:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("server closed the connection")
        data += chunk
    return Header.decode(data[:HEADER_SIZE]), data[HEADER_SIZE:]


def test_item3_trace_on_a_full_filesystem_stops_tracing_and_serving_goes_on(
        tmp_path: Path) -> None:
    """``serve --trace`` whose file cannot grow: TraceWriter raised out of the reactor and
    took every device down (clients got ECONNRESET). Now tracing stops with one warning."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    trace = tmp_path / "trace.jsonl"
    proc = _serve_limited(tmp_path, src, 32 << 10, "--trace", str(trace))
    try:
        sock = _blocking_client(tmp_path / "rtc.sock")
        payload = m.RegionRead(0, 0, 4).encode()
        request = Header(1, Command.REGION_READ, HEADER_SIZE + len(payload), 0).encode() \
            + payload
        for _ in range(2000):  # ~100 bytes of trace each: well past the limit
            sock.sendall(request)
            header, _ = _blocking_reply(sock)
            assert not header.is_error
        sock.close()
        assert proc.poll() is None
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert err.count("tracing stopped") == 1, err
    assert "Traceback" not in err
    assert 0 < trace.stat().st_size <= 32 << 10


def test_item3_log_write_failure_stops_logging_once(tmp_path: Path) -> None:
    """A log stream that cannot be written (stderr on a full disk): the stock handler
    printed a "--- Logging error ---" traceback per record; now one note, then silence."""
    import io
    import logging

    from platpass.ops.logs import configure_logging

    class Full(io.StringIO):
        def write(self, _s: str) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    note = io.StringIO()
    real_stderr = __import__("sys").stderr
    __import__("sys").stderr = note
    try:
        handler = configure_logging("text", "info", Full())
        log = logging.getLogger("platpass.test")
        for i in range(100):
            log.warning("record %d", i)
    finally:
        __import__("sys").stderr = real_stderr
        logging.getLogger("platpass").removeHandler(handler)
    assert handler.failed is not None  # type: ignore[attr-defined]
    assert note.getvalue().count("logging stopped") == 1
    assert "Traceback" not in note.getvalue()
