"""The socket server in-process: real sockets, the real reactor, a real simulated device.

The fuzz test throws arbitrary and half-valid messages (with fds) at a connected server
over a socketpair and checks, message by message: the loop never raises, every fd it was
sent is closed or kept by the device, and a refused message leaves the device unchanged.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from platpass.errors import HostError
from platpass.host.simulated.board import open_sim_backend
from platpass.host.simulated.clock import ManualClock
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.iommu import EmulatedIommu
from platpass.vfio_device.uapi import IrqSetFlags
from platpass.vfio_user.protocol import (
    HEADER_SIZE,
    NEED_DATA,
    Command,
    Connection,
    ConnectionClosed,
    DeviceInfo,
    DmaMap,
    DmaUnmap,
    Header,
    IrqInfo,
    Message,
    RegionInfoRequest,
    RegionRead,
    RegionWrite,
    SetIrqs,
    Version,
)
from platpass.vfio_user.server import SocketOptions, VfioUserServer

from .conftest import board_node, driver_for, open_fds

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")


class Wire:
    """The client end of a socketpair whose other end the server adopted."""

    def __init__(self, reactor: EpollReactor, server: VfioUserServer,
                 device: VfioDevice) -> None:
        self.reactor = reactor
        self.endpoint = server._add_endpoint("dev", device, *self._listener(), SocketOptions())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        self.sock.setblocking(False)
        self.endpoint.adopt(theirs)
        self.framer = Connection(max_message_size=1 << 24)

    @staticmethod
    def _listener() -> tuple[socket.socket, None]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("")  # autobind: an abstract address, no file
        sock.listen(1)
        sock.setblocking(False)
        return sock, None

    def send(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        struct.pack(f"{len(fds)}i", *fds))])
        else:
            self.sock.sendall(data)

    def pump(self) -> list[Message | ConnectionClosed]:
        """Run the server until quiet; return what came back."""
        for _ in range(50):
            if not self.reactor.run_once(0):
                break
        out: list[Message | ConnectionClosed] = []
        while self.sock.fileno() != -1:
            try:
                data, anc, _flags, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(64))
            except BlockingIOError:
                break
            fds = [fd for level, kind, raw in anc
                   if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
                   for fd in struct.unpack(f"{len(raw) // 4}i", raw)]
            self.framer.receive_data(data, fds)
            if not data:
                break
        while (event := self.framer.next_event()) is not NEED_DATA:
            out.append(event)  # type: ignore[arg-type]
            if isinstance(event, ConnectionClosed):
                break
        return out

    def command(self, command: int, payload: bytes = b"", fds: tuple[int, ...] = (),
                msg_id: int = 1, flags: int = 0) -> list[Message | ConnectionClosed]:
        self.send(Header(msg_id, command, HEADER_SIZE + len(payload), flags).encode()
                  + payload, fds)
        return self.pump()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def quiet_device(reactor: EpollReactor) -> Iterator[VfioDevice]:
    """A PL031 on a manual clock, so that its registers only change when told to."""
    node = board_node("arm,pl031")
    device = VfioDevice(node, driver_for(node),
                        open_sim_backend(node, reactor, clock=ManualClock(1000.0)), reactor,
                        EmulatedIommu())
    yield device
    device.close()


@pytest.fixture
def wire(reactor: EpollReactor, quiet_device: VfioDevice) -> Iterator[Wire]:
    server = VfioUserServer(reactor)
    link = Wire(reactor, server, quiet_device)
    yield link
    link.close()
    server.close()


def negotiate(link: Wire) -> None:
    (reply,) = link.command(Command.VERSION, Version(0, 1, {"max_msg_fds": 8}).encode())
    assert isinstance(reply, Message) and not reply.header.is_error


def device_state(device: VfioDevice) -> tuple[object, ...]:
    source = device.backend.regions[0].map_source
    assert source is not None
    registers = os.pread(source.fd, device.backend.regions[0].size, source.offset)
    stats = device.stats
    return (registers, device.iommu.mappings, stats.backend_writes, stats.trapped_writes,
            stats.resets)


def test_split_header_and_pipelined_messages(wire: Wire) -> None:
    negotiate(wire)
    a = Header(2, Command.DEVICE_GET_INFO, 32, 0).encode() + DeviceInfo(16).encode()
    b = Header(3, Command.DEVICE_GET_IRQ_INFO, 32, 0).encode() + IrqInfo(16, 0, 0, 0).encode()
    wire.send(a[:5])
    assert wire.pump() == []
    wire.send(a[5:] + b)
    replies = wire.pump()
    assert [r.header.msg_id for r in replies] == [2, 3]  # type: ignore[union-attr]


def test_region_fast_path_and_full_path_agree(wire: Wire, quiet_device: VfioDevice) -> None:
    negotiate(wire)
    (fast,) = wire.command(Command.REGION_READ, RegionRead(0xFE0, 0, 4).encode(), msg_id=7)
    (slow,) = wire.command(Command.REGION_READ, RegionRead(0xFE0, 0, 3).encode(), msg_id=8)
    assert isinstance(fast, Message) and isinstance(slow, Message)
    assert fast.header == Header(7, Command.REGION_READ, 36, 1)
    assert fast.payload[16:19] == slow.payload[16:]
    (bad,) = wire.command(Command.REGION_READ, RegionRead(0x1000, 0, 4).encode(), msg_id=9)
    assert isinstance(bad, Message) and bad.header.error == errno.EINVAL
    (written,) = wire.command(Command.REGION_WRITE, RegionWrite(4, 0, 4, b"\x05\0\0\0").encode())
    assert isinstance(written, Message) and not written.header.is_error
    assert quiet_device.read(0, 4, 4) == 5


def test_oversized_message_is_answered_e2big_at_once_and_skipped(wire: Wire) -> None:
    negotiate(wire)
    size = 4 << 20
    wire.send(Header(5, Command.REGION_WRITE, size, 0).encode())
    (reply,) = wire.pump()
    assert isinstance(reply, Message) and reply.header.error == errno.E2BIG
    body = bytes(size - HEADER_SIZE)
    for at in range(0, len(body), 1 << 16):
        wire.send(body[at:at + (1 << 16)])
        wire.pump()
    (info,) = wire.command(Command.DEVICE_GET_INFO, DeviceInfo(16).encode(), msg_id=6)
    assert isinstance(info, Message) and info.header.msg_id == 6 and not info.header.is_error


def test_unresynchronisable_stream_closes_only_that_connection(
        reactor: EpollReactor, wire: Wire, make_device: object) -> None:
    negotiate(wire)
    before = wire.endpoint.device.stats.resets
    wire.send(struct.pack("=HHIII", 1, Command.DEVICE_RESET, 8, 0, 0))
    assert wire.pump() == [ConnectionClosed(partial=False)]
    assert wire.endpoint.client is None
    assert wire.endpoint.device.stats.resets == before  # nothing ran
    # The device is still served: a new client can connect and negotiate.
    ours, theirs = socket.socketpair()
    wire.endpoint.adopt(theirs)
    wire.sock, wire.framer = ours, Connection()
    ours.setblocking(False)
    negotiate(wire)


def test_disconnect_closes_irq_fds_and_drops_dma_keeps_registers(
        wire: Wire, quiet_device: VfioDevice) -> None:
    negotiate(wire)
    efd = os.eventfd(0)
    trigger = SetIrqs(20, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 0, 1)
    wire.command(Command.DEVICE_SET_IRQS, trigger.encode(), (efd,))
    wire.command(Command.DMA_MAP, DmaMap(32, 3, 0, 0x100000, 0x1000).encode())  # type: ignore[arg-type]
    wire.command(Command.REGION_WRITE, RegionWrite(4, 0, 4, b"\x33\0\0\0").encode())
    assert len(quiet_device.iommu) == 1
    fds_with_client = open_fds()
    wire.sock.close()
    wire.pump()
    assert wire.endpoint.client is None
    assert len(quiet_device.iommu) == 0
    assert quiet_device.read(0, 4, 4) == 0x33
    gone = fds_with_client - open_fds()
    assert len(gone) >= 2  # the server's socket end and the device's dup of the eventfd
    os.close(efd)


def hung_up(sock: socket.socket) -> bool:
    """True when the server closed the connection (EOF, or a reset if data was unread)."""
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def test_listening_socket_mode_peercred_and_second_client(
        reactor: EpollReactor, quiet_device: VfioDevice, tmp_path: object) -> None:
    server = VfioUserServer(reactor)
    path = tmp_path / "dev.sock"  # type: ignore[operator]
    endpoint = server.serve("dev", quiet_device, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = socket.socket(socket.AF_UNIX)
    first.connect(str(path))
    reactor.run_once(0.1)
    assert endpoint.client is not None
    second = socket.socket(socket.AF_UNIX)
    second.connect(str(path))
    reactor.run_once(0.1)
    second.settimeout(2)
    assert hung_up(second)  # accepted and closed at once
    assert endpoint.refused == 1 and endpoint.client is not None
    first.close()
    second.close()
    server.close()
    assert not path.exists()
    owned = VfioUserServer(reactor)
    owned.serve("dev", quiet_device, path, SocketOptions(owner=65534, group=65534))
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (65534, 65534)
    owned.close()
    strict = VfioUserServer(reactor)
    strict.serve("dev", quiet_device, path,
                 SocketOptions(mode=0o660, allow_uids=frozenset({os.getuid() + 4242})))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(str(path))
    peer.sendall(Header(1, Command.VERSION, 20, 0).encode() + Version(0, 1).encode()[:4])
    reactor.run_once(0.1)
    peer.settimeout(2)
    assert hung_up(peer)  # refused by SO_PEERCRED before anything was read
    assert strict.endpoints[0].client is None
    peer.close()
    strict.close()


# ----------------------------------------------------------------- fuzz

VALID = [
    (Command.DEVICE_GET_INFO, DeviceInfo(16).encode()),
    (Command.DEVICE_GET_REGION_INFO, RegionInfoRequest(32, 0).encode()),
    (Command.DEVICE_GET_IRQ_INFO, IrqInfo(16, 0, 0, 0).encode()),
    (Command.REGION_READ, RegionRead(0x0, 0, 4).encode()),
    (Command.REGION_WRITE, RegionWrite(0x4, 0, 4, b"\1\2\3\4").encode()),
    (Command.DMA_MAP, DmaMap(32, 3, 0, 0x200000, 0x2000).encode()),  # type: ignore[arg-type]
    (Command.DMA_UNMAP, DmaUnmap(24, 0, 0x200000, 0x2000).encode()),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(20, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, 0, 0, 1).encode()),
    (Command.DEVICE_RESET, b""),
    (Command.VERSION, Version(0, 1).encode()),
]


@st.composite
def hostile_message(draw: st.DrawFn) -> tuple[bytes, int]:
    """A message: valid, mutated, or random; and how many fds to attach."""
    kind = draw(st.sampled_from(["valid", "mutated", "random", "garbage"]))
    if kind == "garbage":  # not even a header: the stream may end up unusable
        return draw(st.binary(min_size=1, max_size=40)), draw(st.integers(0, 2))
    if kind == "random":
        command = draw(st.integers(0, 20))
        payload = draw(st.binary(max_size=64))
    else:
        command, payload = draw(st.sampled_from(VALID))
        if kind == "mutated" and payload:
            raw = bytearray(payload)
            for _ in range(draw(st.integers(1, 4))):
                at = draw(st.integers(0, len(raw) - 1))
                raw[at] = draw(st.integers(0, 255))
            if draw(st.booleans()):
                raw = raw[:draw(st.integers(0, len(raw)))]
            payload = bytes(raw)
    flags = draw(st.sampled_from([0, 0, 0, 0x10, 1, 0x20, 0xFF]))
    header = Header(draw(st.integers(0, 0xFFFF)), command, HEADER_SIZE + len(payload), flags)
    return header.encode() + payload, draw(st.integers(0, 3))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile_message(), min_size=1, max_size=12))
def test_fuzz_server_message_handling(reactor: EpollReactor, quiet_device: VfioDevice,
                                      messages: list[tuple[bytes, int]]) -> None:
    baseline_fds = open_fds()
    server = VfioUserServer(reactor)
    link = Wire(reactor, server, quiet_device)
    try:
        negotiate(link)
        for data, nfds in messages:
            before = device_state(quiet_device)
            fds = tuple(os.eventfd(0) for _ in range(nfds))
            link.send(data, fds)
            for fd in fds:
                os.close(fd)  # ours; the server got its own copies
            replies = link.pump()
            for reply in replies:
                if isinstance(reply, Message):
                    assert reply.header.is_reply
                    for fd in reply.fds:
                        os.close(fd)
                    if reply.header.is_error:
                        assert reply.payload == b""
                        assert device_state(quiet_device) == before
            if any(isinstance(r, ConnectionClosed) for r in replies):
                break
    finally:
        link.close()
        link.pump()
        server.close()
    # Everything the server received was closed, or dropped when the client went away.
    assert open_fds() <= baseline_fds | {quiet_device.backend.regions[0].map_source.fd}


def test_a_client_that_never_reads_stalls_only_itself(
        reactor: EpollReactor, quiet_device: VfioDevice, make_device: object) -> None:
    server = VfioUserServer(reactor)
    hog = Wire(reactor, server, quiet_device)
    other = Wire(reactor, server, make_device("arm,pl011"))  # type: ignore[operator]
    try:
        negotiate(hog)
        negotiate(other)
        request = Header(1, Command.DEVICE_GET_REGION_INFO, 48, 0).encode() + \
            RegionInfoRequest(32, 0).encode()
        client = hog.endpoint.client
        assert client is not None
        for _ in range(100_000):  # flood until the server holds unsent replies
            try:
                hog.sock.send(request)
            except BlockingIOError:
                for _ in range(5):
                    reactor.run_once(0)
                if client._out:
                    break
        assert client._out  # its replies wait; its input is no longer read
        assert not reactor.watching(client.fd)
        (reply,) = other.command(Command.DEVICE_GET_INFO, DeviceInfo(16).encode(), msg_id=3)
        assert isinstance(reply, Message) and not reply.header.is_error
    finally:
        hog.close()
        other.close()
        for _ in range(10):
            reactor.run_once(0)
        server.close()


def test_a_peer_that_never_negotiates_is_disconnected(
        reactor: EpollReactor, quiet_device: VfioDevice) -> None:
    server = VfioUserServer(reactor, negotiation_timeout=0.05)
    link = Wire(reactor, server, quiet_device)
    try:
        reactor.run_until(lambda: link.endpoint.client is None, 2.0)
        assert link.endpoint.client is None
        assert link.pump() == [ConnectionClosed(partial=False)]
        # A client that negotiates in time keeps its connection.
        ours, theirs = socket.socketpair()
        link.endpoint.adopt(theirs)
        link.sock, link.framer = ours, Connection()
        ours.setblocking(False)
        negotiate(link)
        reactor.run_until(lambda: False, 0.15)
        assert link.endpoint.client is not None
    finally:
        link.close()
        link.pump()
        server.close()


def test_serve_fd_refuses_what_is_not_a_listening_unix_socket(
        reactor: EpollReactor, quiet_device: VfioDevice) -> None:
    server = VfioUserServer(reactor)
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        with pytest.raises(HostError, match="not a listening socket"):
            server.serve_fd("dev", quiet_device, a.fileno())
        with pytest.raises(HostError, match="not a socket"):
            server.serve_fd("dev", quiet_device, r)
        assert not server.endpoints
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
        server.close()
