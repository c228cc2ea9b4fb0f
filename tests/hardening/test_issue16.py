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
        reactor: EpollReactor, two_devices: Any, warnings_logged: list[str]) -> None:
    """EMFILE on accept left the listening socket readable and the loop retried (and
    logged) at full speed. Now accepting pauses (one warning), other clients are served,
    and accepting resumes once fds are available."""
    _server, a, b = two_devices
    other = _connect(reactor, b)
    failing = _FailingAccept(a.sock, errno.EMFILE)
    a.sock = failing  # type: ignore[assignment]
    waiting = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    waiting.connect(str(a.path))  # stays in the backlog: the socket stays readable
    for i in range(50):
        reactor.run_once(0)
        if i % 10 == 0:
            assert not _read_reg(reactor, other, 100 + i).is_error
    assert failing.calls <= 3
    assert len([line for line in warnings_logged if "accept failed" in line]) == 1
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
    root = logging.getLogger("platpass")
    saved = (root.level, root.propagate)
    try:
        handler = configure_logging("text", "info", Full())
        log = logging.getLogger("platpass.test")
        for i in range(100):
            log.warning("record %d", i)
    finally:
        __import__("sys").stderr = real_stderr
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
    assert handler.failed is not None  # type: ignore[attr-defined]
    assert note.getvalue().count("logging stopped") == 1
    assert "Traceback" not in note.getvalue()


# ---------------------------------------------------------------- item 4: inputs that hang

SRC = str(Path(__file__).resolve().parents[2] / "src")
SIM_DTS = Path(SRC) / "platpass" / "boards" / "sim-board.dts"
RTC = "/soc@9000000/rtc@20000"


def _platpass(*args: str, timeout: float = 60.0, cwd: Path | None = None) -> Any:
    """``python3 -m platpass ARGS`` with a hard timeout (a hang fails the test, fast);
    memory capped at 2 GiB so a regression fails instead of taking the machine."""
    import resource
    import subprocess
    import sys

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    return subprocess.run([sys.executable, "-m", "platpass", *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=SRC),
                          preexec_fn=cap, cwd=cwd, stdin=subprocess.DEVNULL)


def _one_line_error(done: Any, *words: str) -> None:
    assert done.returncode not in (0, None), done
    assert "Traceback" not in done.stderr, done.stderr
    err = done.stderr.strip()
    assert err and all(w in err for w in words), err


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "in.fifo"
    os.mkfifo(path)
    return path


def _guest_dt(*extra: str) -> tuple[str, ...]:
    return ("guest-dt", "--dts", str(SIM_DTS), RTC, *extra)


@pytest.mark.parametrize("case", [
    "scan-zero", "scan-urandom", "scan-fifo", "scan-dir-fifo", "serve-fifo", "serve-zero",
    "placement-fifo", "base-dtb-zero", "base-dtb-fifo", "replay-fifo", "replay-zero",
    "up-check-fifo", "up-check-zero", "dts-fifo"])
def test_item4_devices_and_fifos_are_refused_at_once(case: str, tmp_path: Path,
                                                     fifo: Path) -> None:
    """Each of these grew to gigabytes (/dev/zero, /dev/urandom) or blocked forever (a
    FIFO). Now: a one-line "not a regular file" error and a non-zero exit, at once."""
    out = str(tmp_path / "out.dtb")
    args = {
        "scan-zero": ("scan", "--dtb", "/dev/zero"),
        "scan-urandom": ("scan", "--dtb", "/dev/urandom"),
        "scan-fifo": ("scan", "--dtb", str(fifo)),
        "serve-fifo": ("serve", "--dtb", str(fifo), "--socket", str(tmp_path / "s"), RTC),
        "serve-zero": ("serve", "--dtb", "/dev/zero", "--socket", str(tmp_path / "s"), RTC),
        "placement-fifo": _guest_dt("--flavour", "crosvm", "-o", out, "--placement",
                                    str(fifo)),
        "base-dtb-zero": _guest_dt("--flavour", "qemu", "-o", out, "--base-dtb",
                                   "/dev/zero"),
        "base-dtb-fifo": _guest_dt("--flavour", "qemu", "-o", out, "--base-dtb", str(fifo)),
        "replay-fifo": ("replay", str(fifo)),
        "replay-zero": ("replay", "/dev/zero"),
        "up-check-fifo": ("up", "--check", str(fifo)),
        "up-check-zero": ("up", "--check", "/dev/zero"),
        "dts-fifo": ("scan", "--dts", str(fifo)),
    }.get(case)
    if case == "scan-dir-fifo":
        folder = tmp_path / "dtbs"
        folder.mkdir()
        os.mkfifo(folder / "evil.dtb")
        from platpass.host.simulated.board import board_dtb
        (folder / "good.dtb").write_bytes(board_dtb())
        args = ("scan", "--dtb", str(folder))
    assert args is not None
    done = _platpass(*args, timeout=30)
    _one_line_error(done, "not a regular file")
    if case == "scan-dir-fifo":
        assert "good.dtb" in done.stdout  # the rest of the directory is still scanned


def test_item4_dtb_size_cap(tmp_path: Path) -> None:
    from platpass.inputs import MAX_DTB_BYTES

    big = tmp_path / "big.dtb"
    with open(big, "wb") as f:
        f.truncate(MAX_DTB_BYTES + 1)
    done = _platpass("scan", "--dtb", str(big))
    _one_line_error(done, "more than the 2 MiB accepted")


def test_item4_firmware_dev_zero_in_the_toml_is_refused_by_check_and_up(
        tmp_path: Path) -> None:
    config = tmp_path / "up.toml"
    config.write_text(f'[service]\nrun_dir = "{tmp_path}/run"\n\n[[device]]\n'
                      f'node = "{RTC}"\nsource = "dtb"\nfirmware = "/dev/zero"\n'
                      f'backend = "sim"\nsocket = "{tmp_path}/rtc.sock"\n')
    done = _platpass("up", "--check", str(config), timeout=30)
    _one_line_error(done, "/dev/zero", "not a regular file")


def test_item4_dts_incbin_dev_zero_ends(tmp_path: Path) -> None:
    """dtc ran without limits: /incbin/("/dev/zero") never ended (and grew without
    bound). Now dtc runs with a time and memory limit; the error is one line."""
    dts = tmp_path / "zero.dts"
    dts.write_text('/dts-v1/;\n/ { blob = /incbin/("/dev/zero"); };\n')
    done = _platpass("scan", "--dts", str(dts), timeout=90)
    _one_line_error(done, "zero.dts")


def test_item4_dts_incbin_of_a_fifo_ends_at_the_tool_timeout(tmp_path: Path,
                                                             fifo: Path) -> None:
    """/incbin/ of a FIFO: dtc (run with no timeout) blocked forever. The tool timeout
    (60 s; 2 s here) ends it with a one-line error."""
    import subprocess
    import sys

    dts = tmp_path / "fifo.dts"
    dts.write_text(f'/dts-v1/;\n/ {{ blob = /incbin/("{fifo}"); }};\n')
    code = ("import platpass.inputs as i; i.TOOL_TIMEOUT = 2\n"
            "from platpass.errors import DeviceTreeLoadError\n"
            "from platpass.firmware.devicetree import load_dts\n"
            "try:\n    load_dts(__import__('sys').argv[1])\n"
            "except DeviceTreeLoadError as err:\n    print(err)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, str(dts)], capture_output=True,
                              text=True, timeout=30, env=dict(os.environ, PYTHONPATH=SRC))
    finally:
        # Release a dtc left blocked on the FIFO (only if the timeout did not end it).
        with __import__("contextlib").suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert "did not finish within 2 s" in done.stdout, done


def test_item4_run_tool_times_out_on_an_input_that_never_ends(fifo: Path) -> None:
    from platpass.errors import DeviceTreeLoadError
    from platpass.inputs import run_tool

    with pytest.raises(DeviceTreeLoadError, match="did not finish within 1 s"):
        run_tool(["cat", str(fifo)], what="probe", timeout=1.0, error=DeviceTreeLoadError)


def test_item4_uart_output_nobody_reads_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same class (memory a client drives): the simulated UART kept every byte a guest
    ever transmitted; a guest writing forever grew the server without bound."""
    from platpass.host.simulated.models import uart_common

    monkeypatch.setattr(uart_common, "TX_OUTPUT_LIMIT", 64)
    model = object.__new__(uart_common.UartModel)
    model.tx_output = bytearray()
    model.on_tx = None
    model._loopback = lambda: False  # type: ignore[method-assign]
    model._kick_tx = lambda: None  # type: ignore[method-assign]
    model._update_line = lambda: None  # type: ignore[method-assign]
    for i in range(1000):
        model._shift_done(i & 0xFF)
    assert len(model.tx_output) <= 64
    assert model.tx_output[-1] == 999 & 0xFF


# ---------------------------------------------------------------- item 8: log floods

@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """Every WARNING+ line platpass logs (whatever other tests did to its logger)."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    root = logging.getLogger("platpass")
    handler = Keep(logging.WARNING)
    saved = root.level
    root.setLevel(logging.WARNING)
    root.addHandler(handler)
    yield lines
    root.removeHandler(handler)
    root.setLevel(saved)


def test_item8_unsolicited_replies_are_rate_limited_per_client_with_a_count(
        reactor: EpollReactor, two_devices: Any, warnings_logged: list[str]) -> None:
    """2,000 unsolicited replies were 2,000 WARNING lines. Now at most a burst per
    interval, and the disconnect reports how many were suppressed."""
    from platpass.lograte import BURST

    _server, a, _b = two_devices
    sock = _connect(reactor, a)
    reply = Header(5, Command.DEVICE_RESET, HEADER_SIZE, 1).encode()  # type REPLY
    for _ in range(20):
        sock.sendall(reply * 100)
        for _ in range(5):
            reactor.run_once(0.005)
    assert not _read_reg(reactor, sock, 77).is_error  # still served
    sock.close()
    reactor.run_until(lambda: a.client is None, 2.0)
    lines = warnings_logged
    dropped = [line for line in lines
               if line.startswith("dropping unsolicited reply")]
    assert len(dropped) == BURST
    summary = [line for line in lines if "suppressed" in line]
    assert len(summary) == 1 and f"{2000 - BURST} more like" in summary[0], summary


def test_item8_refused_peers_are_rate_limited(reactor: EpollReactor, two_devices: Any,
                                             warnings_logged: list[str]) -> None:
    from platpass.lograte import BURST

    _server, a, _b = two_devices
    first = _connect(reactor, a)
    for _ in range(100):
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.connect(str(a.path))
        a.on_acceptable()
        extra.close()
    assert a.refused == 100
    refusals = [line for line in warnings_logged if "refusing a second client" in line]
    assert len(refusals) == BURST
    first.close()


def test_item8_limiter_reports_suppressed_lines_after_the_interval() -> None:
    import logging

    from platpass.lograte import LogLimiter

    now = [0.0]
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("platpass.test.limiter")
    logger.addHandler(Keep())
    logger.setLevel("INFO")
    limiter = LogLimiter(logger, source="dev", burst=3, interval=10.0, clock=lambda: now[0])
    for i in range(10):
        limiter.warning("short header %d", i)
    assert records == ["short header 0", "short header 1", "short header 2"]
    now[0] = 11.0
    limiter.warning("short header %d", 10)
    assert records[3:] == ["dev: 7 more like 'short header %d' suppressed (at most 3 per "
                           "10 s)", "short header 10"]
    limiter.flush()
    assert len(records) == 5


# ---------------------------------------------------------------- item 5: one-line errors

def _main_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``platpass ARGS`` in-process; it must fail with one ``platpass`` error line."""
    from platpass.cli import main

    code = main(list(args))
    err = capsys.readouterr().err.strip()
    assert code not in (0, None), err
    assert "Traceback" not in err and err, err
    assert err.startswith("platpass"), err
    return err


def _corrupt_dtb(tmp_path: Path) -> Path:
    from platpass.host.simulated.board import board_dtb

    blob = bytearray(board_dtb())
    off = struct.unpack_from(">I", blob, 8)[0]  # off_dt_struct
    blob[off:off + 4] = b"\xff\xff\xff\xff"
    path = tmp_path / "bad.dtb"
    path.write_bytes(blob)
    return path


def test_item5_corrupt_base_dtb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _main_error(capsys, *_guest_dt("--flavour", "qemu", "--base-dtb",
                                         str(_corrupt_dtb(tmp_path)), "-o",
                                         str(tmp_path / "o.dtb")))
    assert "corrupt device tree" in err


@pytest.mark.parametrize("target", ["missing/dir/out.dtbo", "DIR", "/proc/version"])
def test_item5_guest_dt_output_that_cannot_be_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    out = str(tmp_path) if target == "DIR" else \
        target if target.startswith("/") else str(tmp_path / target)
    err = _main_error(capsys, *_guest_dt("--flavour", "crosvm", "-o", out))
    assert f"cannot write {out}" in err


@pytest.mark.parametrize("args, words", [
    (("--fd", "-1"), "fd -1 is not a socket"),
    (("--socket", "S", "--group", str(2**32 + 5)), "out of range"),
    (("--socket", "S", "--owner", "99999999999"), "out of range"),
    (("--socket", "S", "--allow-gid", "4294967296"), "out of range"),
])
def test_item5_serve_bad_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 args: tuple[str, ...], words: str) -> None:
    args = tuple(str(tmp_path / "s.sock") if a == "S" else a for a in args)
    done = _platpass("serve", "--sim", *args, RTC, timeout=30)  # a subprocess: never serves
    _one_line_error(done, words)
    assert not (tmp_path / "s.sock").exists()


def _config(tmp_path: Path, *, run_dir: str | None = None, socket_path: str | None = None,
            extra: str = "") -> Path:
    run_dir = run_dir or str(tmp_path / "run")
    socket_path = socket_path or str(tmp_path / "rtc.sock")
    path = tmp_path / "up.toml"
    path.write_text(f'[service]\nrun_dir = "{run_dir}"\n\n[[device]]\nnode = "{RTC}"\n'
                    f'source = "sim"\nsocket = "{socket_path}"\n{extra}')
    return path


def test_item5_deeply_nested_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert "nested too deeply" in _main_error(capsys, "up", "--check", str(path))


@pytest.mark.parametrize("case", ["nul-socket", "run-dir-file", "run-dir-others",
                                  "socket-too-long", "run-dir-full", "owner-range"])
def test_item5_up_check_refuses_what_up_would(tmp_path: Path, case: str,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of these passed ``up --check`` and then failed in ``up`` (with a traceback)."""
    kwargs: dict[str, str] = {}
    if case == "nul-socket":
        kwargs["socket_path"] = str(tmp_path / "a\\u0000b.sock")
    elif case == "run-dir-file":
        (tmp_path / "runfile").write_text("")
        kwargs["run_dir"] = str(tmp_path / "runfile")
    elif case == "run-dir-others":
        (tmp_path / "shared").mkdir(mode=0o777)
        (tmp_path / "shared").chmod(0o777)
        kwargs["run_dir"] = str(tmp_path / "shared")
    elif case == "socket-too-long":
        kwargs["socket_path"] = str(tmp_path / ("x" * 120 + ".sock"))
    elif case == "run-dir-full":
        real = os.statvfs

        def full(path: Any) -> Any:
            st = real(path)
            return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0,
                                      st.f_files, st.f_ffree, st.f_favail, st.f_flag,
                                      st.f_namemax))
        monkeypatch.setattr(os, "statvfs", full)
    elif case == "owner-range":
        kwargs["extra"] = "owner = 99999999999\n"
    config = _config(tmp_path, **kwargs)
    err = _main_error(capsys, "up", "--check", str(config))
    expected = {"nul-socket": "NUL character", "run-dir-file": "is not a directory",
                "run-dir-others": "writable by other users",
                "socket-too-long": "longer than 107 bytes", "run-dir-full": "no space left",
                "owner-range": "out of range"}[case]
    assert expected in err
    if case != "run-dir-full":  # (the full filesystem is simulated in this process)
        # and up itself refuses with the same words, before starting anything
        _one_line_error(_platpass("up", "--foreground", str(config), timeout=30), expected)


@pytest.mark.parametrize("content, words", [
    (b"[" * 100_000 + b"]" * 100_000 + b"\n", "longer than 64 KiB"),
    (b"[" * 30_000 + b"]" * 30_000 + b"\n", "nested too deeply"),
    (bytes(range(256)) * 4, "not"),
    (b'{"event":"open","device":"/soc@9000000/rtc@20000","clock":"abc","t":1}\n',
     "'clock' must be a number"),
    (b'{"event":"open","device":"/soc@9000000/rtc@20000","clock":1,"t":1}\n'
     b'{"event":"read","device":"/soc@9000000/rtc@20000","t":Infinity,"region":0,'
     b'"offset":0,"size":4,"value":1}\n', "'t' must be a number"),
])
def test_item5_replay_of_bad_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    content: bytes, words: str) -> None:
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(content)
    assert words in _main_error(capsys, "replay", str(trace))


@pytest.mark.parametrize("answer", [
    b'{"ok": true, "status": {"pid": 1}}\n',
    b'{"ok": true, "status": {"pid": 1, "control": "x", "devices": [{"name": 5}]}}\n',
    b'{"ok": true, "status": [1, 2]}\n',
    b'{"ok": true}\n',
    b"[" * 50_000 + b"]" * 50_000 + b"\n",
    b'"just a string"\n',
])
def test_item5_status_against_a_control_socket_answering_unexpected_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], answer: bytes) -> None:
    import threading

    path = tmp_path / "fake.ctl"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve_once() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(answer)
        conn.close()

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    try:
        err = _main_error(capsys, "status", "--control", str(path))
    finally:
        thread.join(5)
        listener.close()
    assert str(path) in err


def test_item5_down_by_a_user_who_may_not_signal_the_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from platpass.ops import service

    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(service, "running_pid", lambda config: 4242)
    monkeypatch.setattr(service.os, "kill", refuse)
    err = _main_error(capsys, "down", str(_config(tmp_path)))
    assert "not permitted to stop server pid 4242" in err


def test_item5_output_into_a_closed_pipe(tmp_path: Path) -> None:
    """``platpass scan ... | head -1``: BrokenPipeError traceback (and "Exception ignored"
    at exit). Now one line and a non-zero exit."""
    import subprocess
    import sys

    from platpass.host.simulated.board import board_dtb

    folder = tmp_path / "dtbs"
    folder.mkdir()
    for i in range(40):
        (folder / f"b{i}.dtb").write_bytes(board_dtb())
    proc = subprocess.Popen([sys.executable, "-m", "platpass", "scan", "--dtb", str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=SRC))
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # what head -1 does
    err = proc.stderr.read().decode()
    proc.wait(60)
    assert proc.returncode != 0
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "broken pipe" in err


# ---------------------------------------------------------------- item 7: two servers

def test_item7_two_serve_processes_racing_for_one_socket_path(tmp_path: Path) -> None:
    """Two ``platpass serve`` processes started together on one path could both bind
    (2 in 600), and the one left on an unlinked name removed the live server's socket
    when it exited. Each round: exactly one serves, the other refuses with a one-line
    error, the name still reaches the winner after the loser exits, and nothing is left
    once the winner stops. (The issue's 600 rounds were run by hand: 0 failures.)"""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=SRC)
    for round_ in range(4):
        path = tmp_path / f"r{round_}.sock"
        procs = [subprocess.Popen([sys.executable, "-m", "platpass", "serve", "--sim",
                                   "--socket", str(path), RTC], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        ready = []
        try:
            for proc in procs:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if line.strip() == "ready":
                        ready.append(proc)
                        break
            assert len(ready) == 1, [p.poll() for p in procs]
            (loser,) = [p for p in procs if p is not ready[0]]
            _out, err = loser.communicate(timeout=30)
            assert loser.returncode != 0
            assert "in use by a running server" in err and "Traceback" not in err, err
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.connect(str(path))  # still the winner's socket
            probe.close()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                proc.communicate(timeout=30)
        assert not path.exists()


# ---------------------------------------------------------------- Also

def test_also_serve_refuses_a_node_named_twice(tmp_path: Path) -> None:
    """``serve NODE NODE`` served one node twice, on two sockets (two independent models
    of one device on the simulated board)."""
    from platpass.cli.serve import choose_exports
    from platpass.host.simulated.board import load_board

    exports, refusals = choose_exports(load_board(), [RTC, RTC], everything_assignable=False)
    assert len(exports) == 1 and refusals == [f"{RTC}: named more than once"]
    done = _platpass("serve", "--sim", "--socket-dir", str(tmp_path / "s"), RTC, RTC,
                     timeout=30)
    _one_line_error(done, "named more than once")
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())


@pytest.mark.parametrize("address, size", [
    (0xFFFF_FFFF_FFFF_F000, 0x2000),  # wraps past 2**64
    (0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_F000),
    (0x1000, 0),  # empty
    (0x1001, 0x1000),  # unaligned
])
def test_also_dma_unmap_of_an_invalid_range_is_einval(reactor: EpollReactor, address: int,
                                                      size: int) -> None:
    """A DMA_UNMAP whose range wraps past 2**64 was ENOENT ("matches no mapping"): the
    exact-match lookup ran before the range check DMA_MAP has. Now EINVAL, like VFIO."""
    from platpass.vfio_user.protocol.connection import Message
    from platpass.vfio_user.session import Session

    device = sim_device(reactor, "arm,pl031")
    try:
        session = Session(device)
        body = NEGOTIATE.encode()
        reply = session.handle(Message(Header(0, Command.VERSION, HEADER_SIZE + len(body), 0),
                                       body))
        assert reply is not None and not reply.header.is_error
        payload = m.DmaUnmap(24, 0, address, size).encode()
        reply = session.handle(Message(Header(1, Command.DMA_UNMAP,
                                              HEADER_SIZE + len(payload), 0), payload))
        assert reply is not None and reply.header.error == errno.EINVAL
        payload = m.DmaUnmap(24, 0, 0x10_0000, 0x1000).encode()  # valid, nothing mapped
        reply = session.handle(Message(Header(2, Command.DMA_UNMAP,
                                              HEADER_SIZE + len(payload), 0), payload))
        assert reply is not None and reply.header.error == errno.ENOENT
    finally:
        device.close()


def test_also_uart_output_never_blocks_or_stops_serving(
        tmp_path: Path, warnings_logged: list[str]) -> None:
    """Same classes as items 3 and 4 in serve --uart-output (added since the review): it
    opened a FIFO blocking (no reader: the server hung at start) and a failing write
    raised out of the UART model's timer, i.e. out of the reactor."""
    from platpass.cli.serve import _UartSink
    from platpass.errors import HostError

    fifo = tmp_path / "uart.fifo"
    os.mkfifo(fifo)
    with pytest.raises(HostError, match="uart-output"):
        _UartSink(str(fifo))  # ENXIO at once, instead of blocking
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    sink = _UartSink(str(fifo))
    os.close(reader)  # the reader goes away
    for _ in range(3):
        sink.write(b"hello")  # EPIPE: logged once, no exception
    assert sink.fd is None
    assert len([line for line in warnings_logged if "UART output stopped" in line]) == 1


def test_item4_up_reads_only_the_end_of_a_large_server_log(tmp_path: Path) -> None:
    """Same class as item 4: ``up`` read the whole server log to quote its last lines."""
    import tracemalloc

    from platpass.ops.service import _tail

    log = tmp_path / "big.log"
    with open(log, "wb") as f:
        f.write(b"x" * 1000 + b"\n")
        f.truncate(64 << 20)
        f.seek(0, 2)
        f.write(b"\nlast words\n")
    tracemalloc.start()
    try:
        text = _tail(log)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert text.endswith("last words") and peak < 1 << 20


def test_item5_mode_out_of_range_is_refused_like_the_toml(tmp_path: Path) -> None:
    """Variation found while checking item 5: ``--mode 77777777`` was accepted (TOML's
    ``mode`` allows 0..0777)."""
    done = _platpass("serve", "--sim", "--socket", str(tmp_path / "m.sock"), "--mode",
                     "77777777", RTC, timeout=30)
    _one_line_error(done, "0..0777")
    assert not (tmp_path / "m.sock").exists()
