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
import random
import socket
import struct
from dataclasses import dataclass, field

import pytest

from platpass.errors import HostError
from platpass.reactor import EpollReactor
from platpass.vfio_user import native
from platpass.vfio_user.protocol import Command, Header
from platpass.vfio_user.protocol.header import HEADER_SIZE
from platpass.vfio_user.server import DeviceEndpoint, SocketOptions, VfioUserServer

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


def run(chunks: list[bytes], *, use_c: bool) -> Run:
    """The stream through a server on one path."""
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
            endpoint.client.close()

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
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("")
    listener.listen(1)
    listener.setblocking(False)
    endpoint = server._add_endpoint("dev", device, listener, None, SocketOptions())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    conn = endpoint.adopt(theirs)
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

