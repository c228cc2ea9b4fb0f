"""Every client call reports a failed socket as ConnectionLost, never as a raw OSError."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from platpass.errors import ConnectionLost, PlatpassError
from platpass.vfio_user.client import VfioUserClient

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")

CALLS: dict[str, Callable[[VfioUserClient], object]] = {
    "negotiate": lambda c: c.negotiate(),
    "device_info": lambda c: c.device_info(),
    "region_info": lambda c: c.region_info(0),
    "map_region": lambda c: c.map_region(0),
    "irq_info": lambda c: c.irq_info(0),
    "read": lambda c: c.read(0, 0, 4),
    "read_bytes": lambda c: c.read_bytes(0, 0, 3),
    "write": lambda c: c.write(0, 0, 4, 1),
    "post_write": lambda c: c.post_write(0, 0, 4, 1),
    "write_bytes": lambda c: c.write_bytes(0, 0, b"abc"),
    "write_multi": lambda c: c.write_multi([(0, 0, 4, 1)]),
    "set_irqs": lambda c: c.set_irqs(0, 0x24, fds=()),
    "mask": lambda c: c.mask(0),
    "unmask": lambda c: c.unmask(0),
    "trigger": lambda c: c.trigger(0),
    "reset": lambda c: c.reset(),
    "dma_map": lambda c: c.dma_map(0x1000, 0x1000),
    "dma_unmap": lambda c: c.dma_unmap(0x1000, 0x1000),
}


@pytest.fixture
def pair() -> Iterator[tuple[VfioUserClient, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client = VfioUserClient(ours)
    yield client, theirs
    client.close()
    theirs.close()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_peer_gone_before_the_call(pair: tuple[VfioUserClient, socket.socket],
                                   name: str) -> None:
    client, theirs = pair
    theirs.close()
    with pytest.raises(ConnectionLost) as info:
        CALLS[name](client)
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)
    assert isinstance(info.value, PlatpassError) and client.closed
    # And every later call says the same, whatever it is.
    with pytest.raises(ConnectionLost):
        CALLS["read"](client)


@pytest.mark.parametrize("name", sorted(set(CALLS) - {"post_write"}))
def test_peer_hangs_up_while_we_wait(pair: tuple[VfioUserClient, socket.socket],
                                     name: str) -> None:
    client, theirs = pair
    theirs.shutdown(socket.SHUT_WR)  # our send still works; the reply never comes
    with pytest.raises(ConnectionLost) as info:
        CALLS[name](client)
    assert info.value.errno == errno.ECONNRESET
    assert "server closed the connection" in str(info.value)


def test_posted_write_returns_once_sent(pair: tuple[VfioUserClient, socket.socket]) -> None:
    client, theirs = pair
    client.post_write(0, 0x18, 4, 0xAB)
    data = theirs.recv(64)
    assert len(data) == 36 and data[8:12] == (1 << 4).to_bytes(4, "little")  # no-reply flag


def test_connect_failures_and_timeouts(tmp_path: Path) -> None:
    with pytest.raises(ConnectionLost) as info:
        VfioUserClient.connect(tmp_path / "nobody.sock")
    assert info.value.errno == errno.ENOENT
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)  # the kernel completes the connection; nobody ever answers
    try:
        with pytest.raises(ConnectionLost) as info:
            VfioUserClient.connect(tmp_path / "silent.sock", timeout=0.2)
        assert info.value.errno == errno.ETIMEDOUT
    finally:
        silent.close()


def test_fast_path_hands_odd_replies_to_the_framer_and_resumes_after(
        pair: tuple[VfioUserClient, socket.socket]) -> None:
    """A reply split over two receives, or arriving with more after it, goes through the
    full codec; the fast path is used again only once the framer holds nothing (a reply
    already in the framer must be taken from there, not waited for on the socket)."""
    from platpass.vfio_user.protocol.region_access import BUFFER_SIZE, pack_read_reply

    client, theirs = pair
    client.sock.settimeout(5)  # a wrong wait fails the test instead of hanging it

    def reply(msg_id: int, value: int) -> bytes:
        buf = bytearray(BUFFER_SIZE)
        return bytes(buf[:pack_read_reply(buf, msg_id, 0, 0, 4, value)])

    replies = [reply(i, 0x1000 + i) for i in range(1, 7)]
    theirs.send(replies[0][:10])  # split: the fast path sees 10 bytes
    theirs.send(replies[0][10:])
    assert client.read(0, 0, 4) == 0x1001
    theirs.send(replies[1] + replies[2])  # one receive: two whole replies
    assert client.read(0, 0, 4) == 0x1002
    assert client.read(0, 0, 4) == 0x1003  # already in the framer: nothing to wait for
    theirs.send(replies[3] + replies[4][:5])  # a whole reply and a piece of the next
    assert client.read(0, 0, 4) == 0x1004
    theirs.send(replies[4][5:])
    assert client.read(0, 0, 4) == 0x1005  # from the framer, which held its start
    theirs.send(replies[5])
    assert client.read(0, 0, 4) == 0x1006  # fast again
    requests = theirs.recv(4096)
    assert len(requests) == 6 * 32  # one REGION_READ per call, nothing else sent
