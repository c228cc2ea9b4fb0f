"""Posted writes (REGION_WRITE with the no-reply flag): in order, never stale, never lost
silently.

A real ``platpass serve`` and the blocking client: a write-then-read sequence over the
PL011's trapped FIFO never reads a stale value. In-process (the server on a socketpair):
posted writes batched in one chunk with a read are all applied before the read, and a
posted write the device refuses is counted and logged, with no reply.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_user.client import VfioUserClient
from platpass.vfio_user.protocol import Command, HeaderFlags, Message, RegionRead, RegionWrite
from platpass.vfio_user.protocol.region_access import (
    BUFFER_SIZE,
    pack_read,
    pack_write,
)
from platpass.vfio_user.server import VfioUserServer

from . import test_server
from .test_end_to_end import PL011, Server
from .test_server import Wire, negotiate

# The in-process server's fixtures.

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")
quiet_device = test_server.quiet_device
wire = test_server.wire

DR, FR, LCR_H, CR, IMSC = 0x000, 0x018, 0x02C, 0x030, 0x038
TXFF, TXFE = 1 << 5, 1 << 7
FEN, WLEN8 = 1 << 4, 3 << 5
UARTEN = 1 << 0
FIFO_DEPTH = 32  # the board's PL011 is r1p5


@pytest.fixture(scope="module")
def uart_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    sockets = tmp_path_factory.mktemp("posted")
    server = Server("--sim", f"/soc@9000000/{PL011}", "--socket-dir", str(sockets))
    yield sockets / f"{PL011}.sock"
    assert server.stop() == 0


def test_write_then_read_over_a_trapped_fifo_is_never_stale(uart_socket: Path) -> None:
    with VfioUserClient.connect(uart_socket) as uart:
        rng = random.Random(15)
        for _round in range(20):
            # Transmitter off: what the guest writes to UARTDR stays in the TX FIFO, so
            # UARTFR tells exactly how many writes the device has seen.
            uart.post_write(0, CR, 4, UARTEN)
            uart.post_write(0, LCR_H, 4, 0)  # FIFO off flushes it ...
            uart.post_write(0, LCR_H, 4, FEN | WLEN8)  # ... and back on, empty
            assert uart.read(0, FR, 4) & (TXFE | TXFF) == TXFE
            for written in range(1, FIFO_DEPTH + 1):
                uart.post_write(0, DR, 4, 0x40 + written)
                flags = uart.read(0, FR, 4)
                assert not flags & TXFE, f"write {written} not seen by the next read"
                assert bool(flags & TXFF) == (written == FIFO_DEPTH)
            value = rng.getrandbits(11)  # UARTIMSC's bits
            uart.post_write(0, IMSC, 4, value)
            assert uart.read(0, IMSC, 4) == value
        uart.post_write(0, IMSC, 4, 0)
        uart.write(0, IMSC, 4, 0x10)  # the replied form still works between posted ones
        assert uart.read(0, IMSC, 4) == 0x10
        uart.post_write(0, IMSC, 4, 0)


def _post(msg_id: int, offset: int, value: int) -> bytes:
    buf = bytearray(BUFFER_SIZE)
    return bytes(buf[:pack_write(buf, msg_id, 0, offset, 4, value, posted=True)])


def _read(msg_id: int, offset: int) -> bytes:
    buf = bytearray(BUFFER_SIZE)
    return bytes(buf[:pack_read(buf, msg_id, 0, offset, 4)])


def test_posted_writes_in_one_chunk_are_applied_in_order_before_the_read(
        wire: Wire, quiet_device: VfioDevice) -> None:
    negotiate(wire)
    # PL031 RTCLR (0x08) is a plain trapped-or-mapped store the read-back shows.
    wire.send(_post(10, 0x08, 1) + _post(11, 0x08, 2) + _post(12, 0x08, 3) + _read(13, 0x08))
    (reply,) = wire.pump()
    assert isinstance(reply, Message) and reply.header.msg_id == 13
    assert int.from_bytes(reply.payload[16:], "little") == quiet_device.read(0, 0x08, 4) == 3


def test_a_failed_posted_write_is_counted_and_logged_never_answered(
        reactor: EpollReactor, quiet_device: VfioDevice,
        caplog: pytest.LogCaptureFixture) -> None:
    server = VfioUserServer(reactor)
    link = Wire(reactor, server, quiet_device)
    try:
        negotiate(link)
        caplog.set_level(logging.WARNING)
        # Outside the 4 KiB region: once as the fast path would see it, once split.
        assert link.command(Command.REGION_WRITE, RegionWrite(0x1000, 0, 4, b"abcd").encode(),
                            msg_id=20, flags=HeaderFlags.NO_REPLY) == []
        assert link.command(Command.REGION_WRITE, RegionWrite(0xFFF, 0, 3, b"abc").encode(),
                            msg_id=21, flags=HeaderFlags.NO_REPLY) == []
        assert link.endpoint.failed_posted_writes == 2
        assert [r.levelname for r in caplog.records if "posted" in r.getMessage()] == \
            ["WARNING", "WARNING"]
        assert "EINVAL" in caplog.records[-1].getMessage()
        # The connection is fine and the count survives the client.
        (reply,) = link.command(Command.REGION_READ, RegionRead(0xFE0, 0, 4).encode(),
                                msg_id=22)
        assert isinstance(reply, Message) and not reply.header.is_error
        link.close()
        link.pump()
        assert link.endpoint.client is None
        assert link.endpoint.failed_posted_writes == 2
    finally:
        link.close()
        server.close()
