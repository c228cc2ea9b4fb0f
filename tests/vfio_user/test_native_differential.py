"""Differential test of the two fast paths: the same random byte stream, cut into the same
chunks, sent to a real :class:`VfioUserServer` answering in C and to one answering in
Python, with the same simulated device, must get byte-identical replies, the same device
calls in the same order, and the same counters and connection state.

The stream mixes what a client sends on the hot path (single accesses, posted writes)
with everything that must go back to Python (refused accesses, other counts and
commands, corrupted fields, partial messages split across chunks) and with device
failures (a backend error, a read that gives a value too wide for its access). Seeded and
bounded, so a failure reproduces and the test takes a few seconds.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from platpass.errors import HostError
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_user import native
from platpass.vfio_user.protocol import Command, Header
from platpass.vfio_user.protocol.header import HEADER_SIZE
from platpass.vfio_user.server import (
    ClientConnection,
    DeviceEndpoint,
    SocketOptions,
    VfioUserServer,
)

from .conftest import open_device

pytestmark = pytest.mark.skipif(native.NATIVE is None, reason="the C module is not built")

#: Offsets of the device calls the wrapper fails: a backend error, and a read whose value
#: does not fit its access (a device bug: both paths close the connection).
BACKEND_FAILS = 0x44
TOO_WIDE = 0x40
#: An access at this offset makes the device close its client's connection (re-entrancy:
#: what is left of the chunk must be dropped, and nothing sent on the closed fd).
CLOSES = 0x30
OFFSETS = (0x0, 0x4, 0x18, 0x24, 0x38, 0x3C, BACKEND_FAILS, 0x48, 0x48, 0x7FC, 0xFF8,
           0xFFC, 0x1000, 0x2, 0x1, 0x3)


@dataclass
class Run:
    """What one server did with the stream."""

    replies: list[bytes] = field(default_factory=list)
    calls: list[tuple[int, ...]] = field(default_factory=list)
    closed_at: int | None = None
    failed_posted: int = 0


def random_message(rng: random.Random, msg_id: int) -> bytes:
    """One message: mostly single accesses the fast paths answer, else anything."""
    kind = rng.random()
    command = 9 if rng.random() < 0.5 else 10
    count = rng.choice((1, 2, 4, 4, 4, 8)) if rng.random() < 0.95 else rng.choice((3, 16))
    # the accesses that end the connection are rare: the stream goes on long enough
    offset = rng.choice(OFFSETS) if rng.random() < 0.96 else rng.choice((CLOSES, TOO_WIDE))
    region = 0 if rng.random() < 0.9 else rng.choice((1, 9, 63, 64, 70))
    flags = 0
    if command == 10 and rng.random() < 0.3:
        flags = 0x10  # posted
    value = rng.getrandbits(8 * count)
    body = value.to_bytes(count, "little") if command == 10 else b""
    size = 32 + len(body)
    error = 0
    if kind < 0.1:  # a corrupted field
        which = rng.randrange(5)
        if which == 0:
            size += rng.choice((-1, 1, 8))
        elif which == 1:
            flags = rng.choice((1, 0x20, 0x11, 0x30))
        elif which == 2:
            error = rng.choice((1, 5))
        elif which == 3:
            command = rng.choice((4, 5, 11, 0xFFFF))
        else:
            count = rng.choice((0, 5, 0xFFFFFFFF))
    message = struct.pack("=HHIIIQII", msg_id, command, size, flags, error, offset,
                          region, count) + body
    if kind > 0.97:  # a byte flipped anywhere
        at = rng.randrange(len(message))
        message = message[:at] + bytes([message[at] ^ (1 << rng.randrange(8))]) \
            + message[at + 1:]
    return message


def random_chunks(seed: int) -> list[bytes]:
    """A random stream cut into chunks: mostly at message boundaries (several messages a
    chunk, as a client that queues does), sometimes inside a message."""
    rng = random.Random(seed)
    messages = [random_message(rng, i) for i in range(rng.randrange(1, 40))]
    stream = b"".join(messages)
    cuts = {len(stream)}
    end = 0
    for message in messages:
        if rng.random() < 0.2:
            cuts.add(end + rng.randrange(1, len(message)))
        end += len(message)
        if rng.random() < 0.4:
            cuts.add(end)
    chunks = []
    start = 0
    for cut in sorted(cuts):
        chunks.append(stream[start:cut])
        start = cut
    return chunks


def version_message() -> bytes:
    caps = json.dumps({"capabilities": {"max_msg_fds": 4, "max_data_xfer_size": 65536}})
    payload = struct.pack("<HH", 0, 1) + caps.encode() + b"\0"
    return Header(0xFFFF, Command.VERSION, HEADER_SIZE + len(payload), 0).encode() + payload



def _adopted(server: VfioUserServer, device: VfioDevice
             ) -> tuple[socket.socket, DeviceEndpoint, ClientConnection]:
    """``device`` served by ``server`` on an abstract listening socket, and one client
    connected through a socket pair: (our end, the endpoint, the server's connection)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("")
    listener.listen(1)
    listener.setblocking(False)
    endpoint = server._add_endpoint("dev", device, listener, None, SocketOptions())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours, endpoint, endpoint.adopt(theirs)

def run(chunks: list[bytes], *, use_c: bool,
        after_close: Callable[[int], None] | None = None) -> Run:
    """The stream through a server on one path; ``after_close(fd)`` runs in the device
    call that closed the connection (at :data:`CLOSES`), right after the close."""
    reactor = EpollReactor()
    server = VfioUserServer(reactor, native=use_c)
    assert server.native is use_c
    device = open_device(reactor, "arm,pl011")
    out = Run()
    real_read, real_write = device.read, device.write
    endpoint: DeviceEndpoint | None = None

    def side_effects(offset: int) -> None:
        if offset == BACKEND_FAILS:
            raise HostError("the device went away")
        if offset == CLOSES and endpoint is not None and endpoint.client is not None:
            fd = endpoint.client.fd
            endpoint.client.close()
            if after_close is not None:
                after_close(fd)

    def read(region: int, offset: int, count: int) -> int:
        out.calls.append((region, offset, count))
        side_effects(offset)
        real_read(region, offset, count)  # its checks (refusal) and side effects
        if offset == TOO_WIDE:
            return 1 << (8 * count)
        # a value of its own (the model's may depend on time): the same on both runs
        return (len(out.calls) * 0x9E3779B97F4A7C15) & ((1 << (8 * count)) - 1)

    def write(region: int, offset: int, count: int, value: int) -> None:
        out.calls.append((region, offset, count, value))
        side_effects(offset)
        real_write(region, offset, count, value)

    device.read = read  # type: ignore[method-assign]
    device.write = write  # type: ignore[method-assign]
    ours, endpoint, conn = _adopted(server, device)
    ours.setblocking(False)
    try:
        for i, chunk in enumerate([version_message(), *chunks]):
            ours.sendall(chunk)
            for _ in range(20):
                if not reactor.run_once(0):
                    break
            got = b""
            while True:
                try:
                    data = ours.recv(1 << 16)
                except BlockingIOError:
                    break
                got += data
                if not data:
                    break
            if i:
                out.replies.append(got)
            else:
                assert got and conn._fast_ok  # negotiated
                assert (conn._native is not None) is use_c
            if conn.closed:
                out.closed_at = i
                break
        out.failed_posted = conn.session.failed_posted
    finally:
        ours.close()
        server.close()
        device.close()
        reactor.close()
    return out


@pytest.mark.parametrize("seed", range(200))
def test_c_and_python_paths_answer_a_random_stream_identically(seed: int) -> None:
    chunks = random_chunks(seed)
    c = run(chunks, use_c=True)
    py = run(chunks, use_c=False)
    assert c.calls == py.calls
    assert c.replies == py.replies
    assert c.closed_at == py.closed_at
    assert c.failed_posted == py.failed_posted


def access(msg_id: int, offset: int, *, value: int | None = None, posted: bool = False,
           count: int = 4) -> bytes:
    """A single access of region 0 (a read when ``value`` is None)."""
    if value is None:
        return struct.pack("=HHIIIQII", msg_id, 9, 32, 0, 0, offset, 0, count)
    return struct.pack("=HHIIIQII", msg_id, 10, 32 + count, 0x10 if posted else 0, 0,
                       offset, 0, count) + value.to_bytes(count, "little")


@pytest.mark.parametrize("use_c", [True, False], ids=["C", "Python"])
def test_a_device_that_closes_its_connection_gets_no_more_calls(use_c: bool) -> None:
    """The rest of the chunk after the access whose device call closed the connection is
    dropped on both paths: no more device calls (posted writes included), no reply."""
    for closing in (access(2, CLOSES), access(2, CLOSES, value=7, posted=True)):
        chunk = b"".join([access(1, 0x48), closing, access(3, 0x48, value=1, posted=True),
                          access(4, 0x48, value=2, posted=True), access(5, 0x48)])
        got = run([chunk], use_c=use_c)
        assert got.calls[2:] == []
        assert got.closed_at == 1
        assert len(got.replies[0]) == 36  # the first read's reply, nothing after


@pytest.mark.parametrize("use_c", [True, False], ids=["C", "Python"])
def test_nothing_is_sent_on_a_closed_connections_fd_number(use_c: bool) -> None:
    """A device call closes the connection and the fd number is taken by another file at
    once (as the next accept or open would): the reply of that access, and nothing else,
    may go there."""
    reused: list[socket.socket] = []

    def take_the_number(fd: int) -> None:
        a, b = socket.socketpair()  # the lowest free number: usually fd already
        if a.fileno() != fd:
            os.dup2(a.fileno(), fd)
            a.close()
            a = socket.socket(fileno=fd)
        reused.extend([a, b])

    chunk = access(1, CLOSES) + access(2, 0x48)
    got = run([chunk], use_c=use_c, after_close=take_the_number)
    try:
        assert got.closed_at == 1
        other = reused[1]
        other.setblocking(False)
        with pytest.raises(BlockingIOError):
            other.recv(100)  # nothing came out of the server on the new file
    finally:
        for sock in reused:
            sock.close()


@pytest.mark.parametrize("use_c", [True, False], ids=["C", "Python"])
def test_a_client_thread_stops_when_a_device_call_closes_its_connection(use_c: bool) -> None:
    """On a client's own thread the same holds: after the device call that closed the
    connection, the thread neither sends nor receives on the fd number (now another
    file's) and leaves."""
    reactor = EpollReactor()
    server = VfioUserServer(reactor, client_threads=1, native=use_c)
    device = open_device(reactor, "arm,pl011")
    reused: list[socket.socket] = []
    taken = threading.Event()
    real_read = device.read

    def read(region: int, offset: int, count: int) -> int:
        value = real_read(region, offset, count)
        if offset == CLOSES and endpoint.client is not None:
            fd = endpoint.client.fd
            endpoint.client.close()
            a, b = socket.socketpair()
            if a.fileno() != fd:
                os.dup2(a.fileno(), fd)
                a.close()
                a = socket.socket(fileno=fd)
            reused.extend([a, b])
            taken.set()
        return value

    device.read = read  # type: ignore[method-assign]
    ours, endpoint, conn = _adopted(server, device)
    loop = threading.Thread(target=reactor.run_forever)
    loop.start()
    try:
        ours.settimeout(10)
        ours.sendall(version_message())
        assert ours.recv(1 << 16)
        for _ in range(1000):  # the loop starts it right after the VERSION reply
            if conn._thread is not None:
                break
            time.sleep(0.01)
        thread = conn._thread
        assert thread is not None and (conn._native is not None) is use_c
        ours.sendall(access(1, CLOSES))
        assert ours.recv(100) == b""  # closed, without the reply
        assert taken.wait(10)
        a, b = reused
        b.sendall(b"someone else's")
        thread.join(10)
        assert not thread.is_alive()
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(100)  # the thread sent nothing on the new file
        a.setblocking(False)
        assert a.recv(100) == b"someone else's"  # and took nothing from it
    finally:
        reactor.call_later(0, reactor.stop)
        loop.join(10)
        ours.close()
        for sock in reused:
            sock.close()
        server.close()
        device.close()
        reactor.close()
    assert not loop.is_alive()


def test_fds_of_a_chunk_the_fast_poll_kept_are_closed_with_the_connection() -> None:
    """The reactor's wait received a chunk with fds for Python (kept for the reader's
    callback), and the connection is closed before that callback runs (by another fd's
    callback, or the server's close): the fds are closed, not leaked."""
    reactor = EpollReactor()
    server = VfioUserServer(reactor, native=True)
    device = open_device(reactor, "arm,pl011")
    ours, _endpoint, conn = _adopted(server, device)
    r, w = os.pipe()
    try:
        ours.sendall(version_message())
        reactor.run_once(1)
        assert ours.recv(1 << 16) and conn._native is not None
        ours.sendmsg([access(1, 0x48)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                          struct.pack("i", w))])
        os.close(w)
        w = -1
        assert native.NATIVE is not None
        ready = native.NATIVE.poll(reactor._epoll.fileno(), 1.0, reactor._fast, None)
        assert ready == [conn.fd]  # kept for its callback: it came with an fd
        conn.close()
        os.set_blocking(r, False)
        assert os.read(r, 1) == b""  # every copy of the write end is closed
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
        ours.close()
        server.close()
        device.close()
        reactor.close()
