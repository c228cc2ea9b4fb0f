"""A client served on a thread of its own (``VfioUserServer(client_threads=N)``, what
``serve`` and ``up`` use): it gets the thread, keeps order, and the loop keeps serving
everything else meanwhile (timers the client's requests schedule, interrupts, other
clients); disconnects, server shutdown and back-pressure end the thread cleanly.

The loop runs on a thread of the test, as in a serving process; the client is the
blocking :class:`VfioUserClient` over a real socket.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_user.client import VfioUserClient
from platpass.vfio_user.protocol.region_access import (
    ACCESS_SIZE,
    pack_read,
    read_reply_value,
)
from platpass.vfio_user.server import DeviceEndpoint, VfioUserServer

from .conftest import open_device

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")

SP805_LOCK, SP805_LOAD, SP805_CONTROL, SP805_INTCLR = 0xC00, 0x000, 0x008, 0x00C
PL031_MR = 0x004


class Served:
    """Devices served by one server whose loop runs on its own thread."""

    def __init__(self, tmp: Path, *compatibles: str, threads: int = 8) -> None:
        self.reactor = EpollReactor()
        self.server = VfioUserServer(self.reactor, client_threads=threads)
        self.devices: list[VfioDevice] = []
        self.endpoints: list[DeviceEndpoint] = []
        self.paths: list[Path] = []
        for index, compatible in enumerate(compatibles):
            device = open_device(self.reactor, compatible)
            self.devices.append(device)
            self.paths.append(tmp / f"dev{index}.sock")
            self.endpoints.append(self.server.serve(f"dev{index}", device, self.paths[-1]))
        self.thread = threading.Thread(target=self.reactor.run_forever, daemon=True)
        self.thread.start()

    def stop_loop(self) -> None:
        if self.thread.is_alive():
            self.reactor.call_later(0, self.reactor.stop)  # wakes the loop (helpers allowed)
            self.thread.join(5)
        assert not self.thread.is_alive()

    def stop(self) -> None:
        self.stop_loop()
        if self.server.endpoints:
            self.server.close()
        for device in self.devices:
            device.close()
        self.reactor.close()


@pytest.fixture
def sp805(tmp_path: Path) -> Iterator[Served]:
    served = Served(tmp_path, "arm,sp805")
    yield served
    served.stop()


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_irq(fd: int, timeout: float) -> int:
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.eventfd_read(fd) if ready else 0


def test_first_client_gets_the_thread_and_the_timers_it_schedules_fire(sp805: Served
                                                                       ) -> None:
    # The watchdog's countdown is a loop timer scheduled while the client's thread
    # handles the writes; nothing else wakes the loop, which waits with no timeout.
    irq = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        with VfioUserClient.connect(sp805.paths[0]) as wdog:
            client = sp805.endpoints[0].client
            assert client is not None and wait_for(lambda: client.on_own_thread)
            assert sp805.server.threaded == {client}
            wdog.set_trigger_eventfd(0, irq)
            wdog.write(0, SP805_LOCK, 4, 0x1ACCE551)
            wdog.write(0, SP805_LOAD, 4, 2000)  # 2 ms at 1 MHz
            wdog.post_write(0, SP805_CONTROL, 4, 1)  # INTEN
            assert wait_irq(irq, 2.0) == 1
            assert wdog.read(0, 0x010, 4) == 1  # WDOGRIS
            wdog.write(0, SP805_CONTROL, 4, 0)
    finally:
        os.close(irq)


def test_interrupts_keep_coming_while_the_threaded_client_is_busy(sp805: Served) -> None:
    irq = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    stop = threading.Event()
    reads: list[int] = []
    try:
        with VfioUserClient.connect(sp805.paths[0]) as wdog:
            wdog.set_trigger_eventfd(0, irq)
            wdog.write(0, SP805_LOCK, 4, 0x1ACCE551)
            wdog.write(0, SP805_LOAD, 4, 5000)  # 5 ms

            def busy() -> None:  # the only user of the client from now on
                while not stop.is_set():
                    reads.append(wdog.read(0, SP805_LOAD, 4))

            worker = threading.Thread(target=busy)
            wdog.write(0, SP805_CONTROL, 4, 1)
            worker.start()
            try:
                assert wait_irq(irq, 2.0) == 1  # delivered by the loop meanwhile
            finally:
                stop.set()
                worker.join(5)
            assert len(reads) > 10 and set(reads) == {5000}
            wdog.write(0, SP805_CONTROL, 4, 0)
    finally:
        os.close(irq)


def test_posted_writes_and_reads_keep_their_order(tmp_path: Path) -> None:
    served = Served(tmp_path, "arm,pl031")
    try:
        with VfioUserClient.connect(served.paths[0]) as rtc:
            client = served.endpoints[0].client
            assert client is not None and wait_for(lambda: client.on_own_thread)
            for value in range(0, 1 << 32, 0x01234567):
                rtc.post_write(0, PL031_MR, 4, value)
                assert rtc.read(0, PL031_MR, 4) == value
    finally:
        served.stop()


def test_a_client_that_leaves_frees_the_device_and_the_thread_at_once(sp805: Served
                                                                      ) -> None:
    endpoint = sp805.endpoints[0]
    for _ in range(5):
        # The next client connects right after the previous one closed: it is accepted
        # (the old client's thread takes its EOF first), and gets the thread in turn.
        with VfioUserClient.connect(sp805.paths[0]) as wdog:
            assert wdog.read(0, SP805_LOAD, 4) >= 0
            assert wait_for(lambda: endpoint.client is not None
                            and endpoint.client.on_own_thread)
    assert wait_for(lambda: endpoint.client is None and not sp805.server.threaded)
    assert endpoint.refused == 0


def test_server_close_ends_the_clients_thread_and_its_socket(sp805: Served) -> None:
    wdog = VfioUserClient.connect(sp805.paths[0])
    try:
        client = sp805.endpoints[0].client
        assert client is not None and wait_for(lambda: client.on_own_thread)
        thread = client._thread
        assert thread is not None
        sp805.stop_loop()
        sp805.server.close()  # not on the loop, as after run_forever returns
        thread.join(5)
        assert not thread.is_alive()
        assert client.sock.fileno() == -1  # closed by its thread
        wdog.sock.settimeout(5)
        assert wdog.sock.recv(1) == b""  # the client sees end-of-file
    finally:
        wdog.close()


def test_a_client_that_does_not_read_goes_back_to_the_loop_and_loses_nothing(
        sp805: Served) -> None:
    with VfioUserClient.connect(sp805.paths[0]) as wdog:
        client = sp805.endpoints[0].client
        assert client is not None and wait_for(lambda: client.on_own_thread)
        wdog.write(0, SP805_LOCK, 4, 0x1ACCE551)
        wdog.write(0, SP805_LOAD, 4, 1234)
        sock = wdog.sock
        sock.setblocking(False)
        request = bytearray(ACCESS_SIZE)
        sent = 0
        rest = b""
        deadline = time.monotonic() + 10
        # Reads without taking a reply, until the server's replies fill the socket and it
        # gives the client back to the loop (which stops reading its requests).
        while client.on_own_thread and time.monotonic() < deadline:
            try:
                if rest:  # the end of a request a full stream cut
                    rest = rest[sock.send(rest):]
                    continue
                pack_read(request, sent & 0xFFFF, 0, SP805_LOAD, 4)
                rest = bytes(request[sock.send(request):])
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
        assert not client.on_own_thread
        assert not sp805.server.threaded
        assert sent > 100
        stream = bytearray()
        want = (ACCESS_SIZE + 4) * sent
        while len(stream) < want:
            if rest:  # the end of a request the full stream cut
                with contextlib.suppress(BlockingIOError):
                    rest = rest[sock.send(rest):]
            assert select.select([sock], [], [], 10)[0], "replies stopped"
            chunk = sock.recv(1 << 16)
            assert chunk
            stream += chunk
        sock.setblocking(True)
        for index in range(sent):
            reply = stream[index * (ACCESS_SIZE + 4):(index + 1) * (ACCESS_SIZE + 4)]
            assert read_reply_value(reply, len(reply), index & 0xFFFF, 4) == 1234
        assert len(stream) == want
        # Served by the loop from now on, as any client.
        assert not client.closed and client.sock.fileno() != -1
        assert wdog.read(0, SP805_LOAD, 4) == 1234


def test_clients_past_the_limit_are_served_by_the_loop(tmp_path: Path) -> None:
    served = Served(tmp_path, "arm,pl031", "arm,sp805", threads=1)
    try:
        with VfioUserClient.connect(served.paths[0]) as rtc, \
                VfioUserClient.connect(served.paths[1]) as wdog:
            first, second = (e.client for e in served.endpoints)
            assert first is not None and second is not None
            assert wait_for(lambda: first.on_own_thread) and not second.on_own_thread
            rtc.write(0, PL031_MR, 4, 7)
            wdog.write(0, SP805_LOCK, 4, 0x1ACCE551)
            wdog.write(0, SP805_LOAD, 4, 99)
            assert (rtc.read(0, PL031_MR, 4), wdog.read(0, SP805_LOAD, 4)) == (7, 99)
    finally:
        served.stop()


def test_the_loop_path_without_the_option_has_no_thread(tmp_path: Path) -> None:
    reactor = EpollReactor()
    server = VfioUserServer(reactor)
    device = open_device(reactor, "arm,pl031")
    endpoint = server.serve("rtc", device, tmp_path / "rtc.sock")
    thread = threading.Thread(target=reactor.run_until,
                              args=(lambda: endpoint.client is not None
                                    and endpoint.client.session.negotiated, 5.0))
    thread.start()
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(tmp_path / "rtc.sock"))
        client = VfioUserClient(sock)
        client.negotiate()
        thread.join(5)
        assert endpoint.client is not None and not endpoint.client.on_own_thread
        client.close()
    finally:
        server.close()
        device.close()
        reactor.close()


def test_sigterm_stops_serve_while_its_clients_wait_on_their_threads(tmp_path: Path
                                                                      ) -> None:
    from .test_end_to_end import PL011, PL031, Server

    server = Server("--sim", f"/soc@9000000/{PL011}", f"/soc@9000000/{PL031}",
                    "--socket-dir", str(tmp_path), "--client-threads", "2")
    clients = [VfioUserClient.connect(tmp_path / f"{name}.sock") for name in (PL011, PL031)]
    try:
        assert clients[0].read(0, 0x48, 4) == 0  # UARTDMACR, trapped
        # Both clients' threads exist and wait in their receives (besides the loop's).
        assert wait_for(lambda: len(os.listdir(f"/proc/{server.proc.pid}/task")) >= 3)
        started = time.monotonic()
        assert server.stop() == 0
        assert time.monotonic() - started < 5
        for client in clients:
            client.sock.settimeout(5)
            assert client.sock.recv(1) == b""  # end-of-file, not a hang
        assert not list(tmp_path.glob("*.sock"))
    finally:
        for client in clients:
            client.close()


def test_timers_due_before_a_request_run_before_it_even_with_the_loop_away(sp805: Served
                                                                          ) -> None:
    # The loop may be waiting for the lock or for a CPU while the client's thread keeps
    # serving; the thread runs due timers first, as the loop does before it dispatches,
    # so a countdown that has expired is seen by the next read. Here the loop is stopped.
    with VfioUserClient.connect(sp805.paths[0]) as wdog:
        client = sp805.endpoints[0].client
        assert client is not None and wait_for(lambda: client.on_own_thread)
        sp805.stop_loop()
        wdog.write(0, SP805_LOCK, 4, 0x1ACCE551)
        wdog.write(0, SP805_LOAD, 4, 2000)  # 2 ms at 1 MHz
        wdog.write(0, SP805_CONTROL, 4, 1)  # INTEN: the countdown is a loop timer
        time.sleep(0.02)
        assert wdog.read(0, 0x010, 4) == 1  # WDOGRIS: the expiry ran before this read
        wdog.write(0, SP805_CONTROL, 4, 0)


@pytest.mark.parametrize("value", ["65", "-1", "many"])
def test_client_threads_option_is_bounded(value: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "platpass", "serve", "--sim",
                           "--socket-dir", "/nonexistent", "--client-threads", value],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--client-threads" in done.stderr and "Traceback" not in done.stderr


def test_serve_serves_from_the_loop_unless_asked(tmp_path: Path) -> None:
    """Client threads are opt-in: by default serve's process has its loop's thread only."""
    from .test_end_to_end import PL011, Server

    server = Server("--sim", f"/soc@9000000/{PL011}", "--socket-dir", str(tmp_path))
    client = VfioUserClient.connect(tmp_path / f"{PL011}.sock")
    try:
        assert client.read(0, 0x48, 4) == 0
        assert len(os.listdir(f"/proc/{server.proc.pid}/task")) == 1
    finally:
        client.close()
        assert server.stop() == 0
