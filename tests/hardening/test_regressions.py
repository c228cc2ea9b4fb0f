"""Regression tests for what the vfio-user fuzzer and the fault tests found.

Each test names the finding; each was failing before its fix in ``vfio_user/``.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from fault_helpers import RemovableBackend, sim_device

from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqSetFlags
from platpass.vfio_user.fuzz import NEGOTIATE, device_state
from platpass.vfio_user.protocol import messages as m
from platpass.vfio_user.protocol.connection import Message
from platpass.vfio_user.protocol.header import HEADER_SIZE, Command, Header
from platpass.vfio_user.server import VfioUserServer
from platpass.vfio_user.session import Session

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")


@pytest.fixture
def reactor() -> Iterator[EpollReactor]:
    loop = EpollReactor()
    yield loop
    loop.close()


def _message(command: int, payload: bytes, msg_id: int = 1) -> Message:
    return Message(Header(msg_id, command, HEADER_SIZE + len(payload), 0), payload)


def _session(device: VfioDevice) -> Session:
    session = Session(device)
    reply = session.handle(_message(Command.VERSION, NEGOTIATE.encode(), 0))
    assert reply is not None and not reply.header.is_error
    return session


@pytest.mark.parametrize("count", [1 << 26, 0x7FFF_FFFF, 0xFFFF_FFFF])
def test_set_irqs_huge_count_without_fds_is_refused_before_any_allocation(
        reactor: EpollReactor, count: int) -> None:
    """Fuzz finding 1: a 36-byte SET_IRQS (DATA_EVENTFD|TRIGGER, no fds, count 2**31-1)
    made the session build a tuple of ``count`` "no fd" entries - 16 GiB for one message
    (the server stalled for seconds or died of MemoryError). Now EINVAL, no allocation."""
    device = sim_device(reactor, "arm,pl061")
    try:
        session = _session(device)
        before = device_state(device)
        payload = m.SetIrqs(20, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                            0, 0, count).encode()
        tracemalloc.start()
        started = time.perf_counter()
        try:
            reply = session.handle(_message(Command.DEVICE_SET_IRQS, payload))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert time.perf_counter() - started < 0.05
        assert peak < 1 << 20
        assert reply is not None and reply.header.error == errno.EINVAL
        assert device_state(device) == before
    finally:
        device.close()


def _wire(reactor: EpollReactor, server: VfioUserServer, device: VfioDevice, tmp_path: object
          ) -> socket.socket:
    endpoint = server.serve("dev", device, tmp_path / "dev.sock")  # type: ignore[operator]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(endpoint.path))
    sock.settimeout(2.0)
    body = NEGOTIATE.encode()
    sock.sendall(Header(0, Command.VERSION, HEADER_SIZE + len(body), 0).encode() + body)
    reactor.run_until(lambda: endpoint.client is not None and endpoint.client.session.negotiated,
                      2.0)
    header = sock.recv(HEADER_SIZE, socket.MSG_PEEK)
    (size,) = struct.unpack_from("=I", header, 4)
    sock.recv(size)
    return sock


def _roundtrip(reactor: EpollReactor, sock: socket.socket, data: bytes) -> Header:
    sock.sendall(data)
    for _ in range(20):
        reactor.run_once(0.01)
    reply = Header.decode(sock.recv(4096))
    return reply


@pytest.mark.parametrize("command", [Command.REGION_READ, Command.REGION_WRITE])
def test_backend_io_error_on_the_fast_path_is_eio_and_keeps_the_client(
        reactor: EpollReactor, tmp_path: object, command: Command,
        caplog: pytest.LogCaptureFixture) -> None:
    """Fault finding: a backend that failed (device removed) during a 4-byte access taken
    by the server's fast path raised out of it, and the connection was dropped with an
    "unexpected failure" traceback. Now the client gets EIO, the failure is logged as a
    warning, and the connection stays usable."""
    device = sim_device(reactor, "arm,pl031", removable=True)
    server = VfioUserServer(reactor)
    sock = _wire(reactor, server, device, tmp_path)
    try:
        backend = device.backend
        assert isinstance(backend, RemovableBackend)
        backend.remove()
        payload = (m.RegionRead(0x4, 0, 4).encode() if command == Command.REGION_READ
                   else m.RegionWrite(0x4, 0, 4, b"\1\0\0\0").encode())
        with caplog.at_level("WARNING", logger="platpass"):
            reply = _roundtrip(reactor, sock, Header(9, command, HEADER_SIZE + len(payload),
                                                     0).encode() + payload)
        assert (reply.msg_id, reply.command, reply.is_error, reply.error) == \
            (9, command, True, errno.EIO)
        assert any("failed in the backend" in r.getMessage() for r in caplog.records)
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
        # The same connection is still served once the device is back.
        backend.removed = False
        info = m.DeviceInfo(16).encode()
        reply = _roundtrip(reactor, sock, Header(10, Command.DEVICE_GET_INFO,
                                                 HEADER_SIZE + len(info), 0).encode() + info)
        assert reply.msg_id == 10 and not reply.is_error
    finally:
        sock.close()
        server.close()
        device.close()


def test_backend_failure_in_client_gone_still_frees_the_device(
        reactor: EpollReactor, tmp_path: object) -> None:
    """Fault finding: when the backend failed while a departing client's IRQs were torn
    down (mask_irq -> HostError), the exception escaped ClientConnection.close() into the
    reactor and the endpoint kept the dead client: nobody could connect again. Now the
    failure is logged and the slot is freed."""
    device = sim_device(reactor, "arm,pl061", removable=True)
    server = VfioUserServer(reactor)
    sock = _wire(reactor, server, device, tmp_path)
    endpoint = server.endpoints[0]
    try:
        import os

        efd = os.eventfd(0)
        payload = m.SetIrqs(20, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER,
                            0, 0, 1).encode()
        sock.sendmsg([Header(3, Command.DEVICE_SET_IRQS, HEADER_SIZE + len(payload),
                             0).encode() + payload],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("=i", efd))])
        for _ in range(10):
            reactor.run_once(0.01)
        assert not Header.decode(sock.recv(4096)).is_error
        os.close(efd)
        backend = device.backend
        assert isinstance(backend, RemovableBackend)
        backend.remove()
        sock.close()
        for _ in range(10):
            reactor.run_once(0.01)  # must not raise
        assert endpoint.client is None
    finally:
        server.close()
        device.backend.removed = False  # type: ignore[attr-defined]
        device.close()


def test_client_gone_on_a_failing_backend_closes_irq_fds_and_drops_dma_maps(
        reactor: EpollReactor) -> None:
    """Fault finding: when masking a line failed in the backend (device removed),
    ``client_gone`` stopped at the first line: the client's trigger eventfd dup stayed
    open for good and its DMA maps were kept. Now every fd is closed, every map dropped,
    and the backend's error is still reported."""
    import os

    from fault_helpers import open_fds

    from platpass.errors import HostError

    device = sim_device(reactor, "arm,pl061", removable=True)
    try:
        baseline = open_fds()
        efd = os.eventfd(0)
        device.set_irqs(0, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 1,
                        fds=(efd,))
        os.close(efd)
        device.dma_map(0x100000, 0x1000, 3)
        assert len(open_fds()) == len(baseline) + 1  # the device's dup
        backend = device.backend
        assert isinstance(backend, RemovableBackend)
        backend.remove()
        with pytest.raises(HostError):
            device.client_gone()
        assert open_fds() == baseline
        assert len(device.iommu) == 0
        assert device.irqs.lines[0].trigger_fd is None
    finally:
        device.backend.removed = False  # type: ignore[attr-defined]
        device.close()
