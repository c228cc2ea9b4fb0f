"""The C fast path (``platpass.vfio_user._native``): it answers exactly what the Python
fast path answers, with the same bytes, and hands everything else back untouched.

The server and client tests run on both paths (the ``fast_path`` fixture); these tests
drive the C objects directly on a socket pair, where every way out of the C loop can be
reached and checked.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import struct
import threading
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.errors import VfioError
from platpass.reactor import EpollReactor
from platpass.vfio_user import native
from platpass.vfio_user.client import VfioUserClient
from platpass.vfio_user.protocol.region_access import (
    ACCESS,
    ACCESS_SIZE,
    answer_read,
    is_write_reply,
    pack_error_reply,
    pack_read,
    pack_read_reply,
    pack_write,
    pack_write_reply,
    parse_request,
)
from platpass.vfio_user.scm_rights import received_fds, rights
from platpass.vfio_user.server import VfioUserServer

from .conftest import open_device

C = native.NATIVE
pytestmark = pytest.mark.skipif(C is None, reason="unreachable: conftest builds the module")


class Refused(Exception):
    """The ``refused`` class of these tests (VfioError in the server)."""


class Conn:
    """What the C server reads of its connection: ``closed``, ``_fast_ready``, ``_out``."""

    def __init__(self) -> None:
        self.closed = False
        self._fast_ready = True
        self._out: deque[object] = deque()


class CountingLock:
    """A lock that records its use (the C loop must leave it as documented)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.held = 0

    def acquire(self) -> bool:
        self.lock.acquire()
        self.held += 1
        return True

    def release(self) -> None:
        self.held -= 1
        self.lock.release()


class Rig:
    """A C ``Server`` on one end of a socket pair, with a device that logs its calls."""

    def __init__(self, readable: int = 0b1, writable: int = 0b1) -> None:
        self.ours, self.peer = socket.socketpair()
        self.buf = bytearray(1 << 16)
        self.reply = bytearray(40)
        self.calls: list[tuple[int, ...]] = []
        self.fail: dict[int, BaseException] = {}  # offset -> what the device raises
        self.values: dict[int, int] = {}
        self.conn = Conn()
        self.lock = CountingLock()
        self.timers = 0
        assert C is not None
        self.server = C.Server(
            fd=self.ours.fileno(), buf=self.buf, reply=self.reply, read=self.read,
            write=self.write, readable=readable, writable=writable, refused=Refused,
            anc_size=socket.CMSG_SPACE(4 * 8), conn=self.conn, lock=self.lock,
            due_timers=self.due_timers)

    def read(self, region: int, offset: int, count: int) -> int:
        self.calls.append((region, offset, count))
        if offset in self.fail:
            raise self.fail[offset]
        return self.values.get(offset, 0x11223344_55667788 & ((1 << (8 * count)) - 1))

    def write(self, region: int, offset: int, count: int, value: int) -> None:
        self.calls.append((region, offset, count, value))
        if offset in self.fail:
            raise self.fail[offset]

    def due_timers(self) -> int:
        self.timers += 1
        return 0

    def send(self, *messages: bytes, fds: tuple[int, ...] = ()) -> int:
        data = b"".join(messages)
        self.peer.sendmsg([data], rights(fds))
        return len(data)

    def replies(self) -> bytes:
        self.peer.setblocking(False)
        try:
            return self.peer.recv(1 << 16)
        except BlockingIOError:
            return b""
        finally:
            self.peer.setblocking(True)

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


@pytest.fixture
def rig() -> object:
    made = Rig()
    yield made
    made.close()


def read_msg(msg_id: int, region: int, offset: int, count: int) -> bytes:
    buf = bytearray(ACCESS_SIZE)
    pack_read(buf, msg_id, region, offset, count)
    return bytes(buf)


def write_msg(msg_id: int, region: int, offset: int, count: int, value: int,
              posted: bool = False) -> bytes:
    buf = bytearray(ACCESS_SIZE + 8)
    n = pack_write(buf, msg_id, region, offset, count, value, posted=posted)
    return bytes(buf[:n])


def read_reply(msg_id: int, region: int, offset: int, count: int, value: int) -> bytes:
    buf = bytearray(ACCESS_SIZE + 8)
    return bytes(buf[:pack_read_reply(buf, msg_id, region, offset, count, value)])


def write_reply(msg_id: int, region: int, offset: int, count: int) -> bytes:
    buf = bytearray(ACCESS_SIZE)
    return bytes(buf[:pack_write_reply(buf, msg_id, region, offset, count)])


# ------------------------------------------------------------------ the server object


def test_a_chunk_of_accesses_is_answered_in_order_with_the_codecs_bytes(rig: Rig) -> None:
    rig.values[0x18] = 0x90
    n = rig.send(read_msg(1, 0, 0x18, 4), write_msg(2, 0, 0x48, 2, 0xBEEF),
                 write_msg(3, 0, 0x48, 1, 0x7F, posted=True), read_msg(4, 0, 0x0, 8))
    assert rig.server.serve(False) == native.DONE
    assert rig.calls == [(0, 0x18, 4), (0, 0x48, 2, 0xBEEF), (0, 0x48, 1, 0x7F), (0, 0, 8)]
    assert rig.replies() == (read_reply(1, 0, 0x18, 4, 0x90) + write_reply(2, 0, 0x48, 2)
                             + read_reply(4, 0, 0, 8, 0x11223344_55667788))
    assert rig.server.answered == 4
    assert n == 32 + 34 + 33 + 32
    assert rig.server.serve(False) == native.AGAIN  # nothing more to read


def test_a_refused_access_stops_the_loop_at_its_message(rig: Rig) -> None:
    rig.fail[0x10] = Refused("EINVAL")
    second = read_msg(2, 0, 0x10, 4)
    rig.send(read_msg(1, 0, 0x18, 4), second, read_msg(3, 0, 0x18, 4))
    assert rig.server.serve(False) == (native.SLOW, 32, 96, None, 0)
    assert rig.calls == [(0, 0x18, 4), (0, 0x10, 4)]  # the third is left, untouched
    assert rig.replies() == read_reply(1, 0, 0x18, 4, 0x55667788)
    assert bytes(rig.buf[32:64]) == second  # the codec reads it from the buffer


@pytest.mark.parametrize("posted", [False, True])
def test_a_backend_failure_is_handed_back_with_its_exception(rig: Rig, posted: bool) -> None:
    err = OSError(errno.ENODEV, "gone")
    rig.fail[0x24] = err
    rig.send(write_msg(7, 0, 0x24, 4, 1, posted=posted), read_msg(8, 0, 0x18, 4))
    result = rig.server.serve(False)
    assert result[:3] == (native.FAILED, 0, 36 + 32)
    assert result[3] is err and result[4] == int(posted)
    assert rig.replies() == b""  # Python answers it EIO (or counts it) and goes on
    assert rig.server.answer(36, 68) == native.DONE
    assert rig.replies() == read_reply(8, 0, 0x18, 4, 0x55667788)


def test_a_value_wider_than_the_access_is_a_failure_not_a_truncation(rig: Rig) -> None:
    rig.values[0x18] = 0x1_0000
    rig.send(read_msg(1, 0, 0x18, 2))
    result = rig.server.serve(False)
    assert result[0] == native.FAILED and isinstance(result[3], ValueError)
    assert rig.replies() == b""


class Index:
    """A register value that is not an int but converts to one (``__index__``)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_a_value_given_as_any_index_is_answered_as_python_answers_it(rig: Rig) -> None:
    """The Python path packs what the device returns with struct, which takes any
    ``__index__``: the C path answers it too, with the same bytes, rather than close."""
    rig.values[0x18] = Index(0xBEEF)  # type: ignore[assignment]
    rig.send(read_msg(1, 0, 0x18, 2))
    assert rig.server.serve(False) == native.DONE
    reply = bytearray(40)
    n = answer_read(read_msg(1, 0, 0x18, 2), 0, 32, reply, lambda *_: Index(0xBEEF), {0})
    assert rig.replies() == bytes(reply[:n]) == read_reply(1, 0, 0x18, 2, 0xBEEF)


def test_interrupts_are_not_swallowed(rig: Rig) -> None:
    rig.fail[0x18] = KeyboardInterrupt()
    rig.send(read_msg(1, 0, 0x18, 4))
    with pytest.raises(KeyboardInterrupt):
        rig.server.serve(False)


UNUSUAL = {
    "count 3": read_msg(1, 0, 0, 4)[:28] + struct.pack("=I", 3),
    "unaligned": read_msg(1, 0, 0x2, 4),
    "region not readable": read_msg(1, 1, 0, 4),
    "region 64": read_msg(1, 64, 0, 4),
    "a reply, not a command": read_reply(1, 0, 0, 4, 0)[:32],
    "no-reply on a read": struct.pack("=HHIIIQII", 1, 9, 32, 0x10, 0, 0, 0, 4),
    "size disagrees": struct.pack("=HHIIIQII", 1, 9, 36, 0, 0, 0, 0, 4) + bytes(4),
    "another command": struct.pack("=HHIIIQII", 1, 4, 32, 0, 0, 0, 0, 4),
    "write of an unknown flag": struct.pack("=HHIIIQIII", 1, 10, 36, 0x20, 0, 0, 0, 4, 1),
}


@pytest.mark.parametrize("name", sorted(UNUSUAL))
def test_an_unusual_message_goes_to_the_codec_untouched(rig: Rig, name: str) -> None:
    data = UNUSUAL[name]
    rig.send(read_msg(9, 0, 0x18, 4), data)
    assert rig.server.serve(False) == (native.SLOW, 32, 32 + len(data), None, 0)
    assert rig.calls == [(0, 0x18, 4)]
    assert bytes(rig.buf[32:32 + len(data)]) == data


def test_a_partial_message_waits_for_the_codec(rig: Rig) -> None:
    rig.send(read_msg(1, 0, 0x18, 4), write_msg(2, 0, 0x48, 4, 5)[:33])
    assert rig.server.serve(False) == (native.SLOW, 32, 65, None, 0)
    assert rig.calls == [(0, 0x18, 4)]


def test_passed_fds_and_end_of_file_go_to_python(rig: Rig) -> None:
    r, w = os.pipe()
    try:
        rig.send(read_msg(1, 0, 0x18, 4), fds=(r,))
        code, at, nbytes, ancdata, flags = rig.server.serve(False)
        assert (code, at, nbytes, flags) == (native.SLOW, 0, 32, 0)
        (got,) = received_fds(ancdata)
        assert os.path.sameopenfile(got, r)
        assert os.get_inheritable(got) is False  # received close-on-exec
        os.close(got)
        assert rig.calls == []  # a chunk with fds is the codec's, whatever it holds
    finally:
        os.close(r)
        os.close(w)
    rig.peer.shutdown(socket.SHUT_WR)
    assert rig.server.serve(False) == (native.SLOW, 0, 0, [], 0)


def test_a_framer_holding_a_partial_message_takes_the_next_chunk(rig: Rig) -> None:
    rig.conn._fast_ready = False
    rig.send(read_msg(1, 0, 0x18, 4))
    assert rig.server.serve(False) == (native.SLOW, 0, 32, [], 0)
    assert rig.calls == []


def test_replies_queued_before_keep_their_place(rig: Rig) -> None:
    rig.conn._out.append(b"earlier reply")
    rig.send(read_msg(1, 0, 0x18, 4), read_msg(2, 0, 0x18, 4))
    code, at, nbytes, length, sent = rig.server.serve(False)
    assert (code, at, nbytes, length, sent) == (native.UNSENT, 32, 64, 36, -errno.EAGAIN)
    assert bytes(rig.reply[:36]) == read_reply(1, 0, 0x18, 4, 0x55667788)
    assert rig.replies() == b""  # nothing jumped the queue


def test_a_full_socket_reports_what_was_sent(rig: Rig) -> None:
    rig.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.ours.setblocking(False)
    filler = 0
    with pytest.raises(BlockingIOError):
        while True:
            filler += rig.ours.send(bytes(512))
    rig.send(read_msg(1, 0, 0x18, 4))
    code, at, nbytes, length, sent = rig.server.serve(False)
    assert (code, at, nbytes, length) == (native.UNSENT, 32, 32, 36)
    assert sent == -errno.EAGAIN or 0 <= sent < 36


def test_a_receive_error_is_reported_not_raised(rig: Rig) -> None:
    r, w = os.pipe()
    try:
        assert C is not None
        server = C.Server(fd=r, buf=rig.buf, reply=rig.reply, read=rig.read,
                          write=rig.write, readable=1, writable=1, refused=Refused,
                          anc_size=64, conn=rig.conn, lock=rig.lock,
                          due_timers=rig.due_timers)
        assert server.serve(False) == (native.RECV_FAILED, errno.ENOTSOCK)
    finally:
        os.close(r)
        os.close(w)


def test_blocking_serve_answers_under_the_lock_and_returns_holding_it(rig: Rig) -> None:
    results: list[object] = []

    def thread() -> None:
        results.append(rig.server.serve(True))
        results.append(rig.lock.held)
        rig.lock.release()

    worker = threading.Thread(target=thread, daemon=True)
    worker.start()
    rig.peer.settimeout(5)
    rig.peer.sendall(read_msg(1, 0, 0x18, 4))
    assert rig.peer.recv(64) == read_reply(1, 0, 0x18, 4, 0x55667788)
    rig.peer.sendall(UNUSUAL["another command"])
    worker.join(5)
    assert results == [(native.SLOW, 0, 32, None, 0), 1]  # let go after the first chunk
    assert rig.timers == 2  # due timers ran before each chunk


def test_blocking_serve_drops_a_chunk_that_arrives_after_close(rig: Rig) -> None:
    results: list[object] = []
    rig.conn.closed = True

    def thread() -> None:
        results.append(rig.server.serve(True))
        rig.lock.release()

    worker = threading.Thread(target=thread, daemon=True)
    worker.start()
    rig.send(read_msg(1, 0, 0x18, 4))
    worker.join(5)
    assert results == [(native.CLOSED, 0, 32, [], 0)]
    assert rig.calls == []


def test_blocking_serve_lets_the_lock_go_when_it_raises(rig: Rig) -> None:
    def boom() -> int:
        raise RuntimeError("timer failed")

    assert C is not None
    server = C.Server(fd=rig.ours.fileno(), buf=rig.buf, reply=rig.reply, read=rig.read,
                      write=rig.write, readable=1, writable=1, refused=Refused,
                      anc_size=64, conn=rig.conn, lock=rig.lock, due_timers=boom)
    rig.send(read_msg(1, 0, 0x18, 4))
    with pytest.raises(RuntimeError, match="timer failed"):
        server.serve(True)
    assert rig.lock.held == 0


def test_bad_arguments_are_refused(rig: Rig) -> None:
    assert C is not None
    with pytest.raises(ValueError, match="too small"):
        C.Server(fd=0, buf=bytearray(8), reply=bytearray(40), read=rig.read, write=rig.write,
                 readable=1, writable=1, refused=Refused, anc_size=0, conn=rig.conn,
                 lock=rig.lock, due_timers=rig.due_timers)
    with pytest.raises(TypeError, match="exception class"):
        C.Server(fd=0, buf=bytearray(64), reply=bytearray(40), read=rig.read,
                 write=rig.write, readable=1, writable=1, refused=int, anc_size=0,
                 conn=rig.conn, lock=rig.lock, due_timers=rig.due_timers)
    with pytest.raises(ValueError, match="outside the buffer"):
        rig.server.answer(10, 1 << 20)
    bare = C.Server.__new__(C.Server)  # never initialised: refuses, does not crash
    for call in (lambda: bare.serve(False), lambda: bare.answer(0, 0), bare.take):
        with pytest.raises(ValueError, match="not initialised"):
            call()


def test_a_connection_and_its_server_are_collected_together(rig: Rig) -> None:
    import gc
    import weakref

    assert C is not None

    class Connection(Conn):
        pass

    conn = Connection()
    conn.native = C.Server(fd=rig.ours.fileno(), buf=bytearray(64), reply=bytearray(40),
                           read=rig.read, write=rig.write, readable=1, writable=1,
                           refused=Refused, anc_size=64, conn=conn, lock=rig.lock,
                           due_timers=rig.due_timers)
    gone = weakref.ref(conn)
    del conn
    gc.collect()
    assert gone() is None


# The decision, message by message, against the Python fast path.
MESSAGE = st.builds(
    lambda msg_id, command, flags, error, offset, region, count, value, size_delta: (
        struct.pack("=HHIIIQII", msg_id, command,
                    ACCESS_SIZE + (count if command == 10 and count <= 8 else 0) + size_delta,
                    flags, error, offset, region, count)
        + (value.to_bytes(8, "little")[:count] if command == 10 and count <= 8 else b"")),
    st.integers(0, 0xFFFF), st.sampled_from([9, 10, 4]), st.sampled_from([0, 0x10, 0x1]),
    st.sampled_from([0, 0, 0, 3]), st.sampled_from([0, 1, 2, 4, 6, 8, 0x48, 0xFF8]),
    st.sampled_from([0, 0, 1, 2, 70]), st.sampled_from([1, 2, 3, 4, 8, 16]),
    st.integers(0, 2**64 - 1), st.sampled_from([0, 0, 0, 1, -1]))


@settings(max_examples=300, deadline=None)
@given(MESSAGE)
def test_c_answers_exactly_what_the_python_fast_path_answers(message: bytes) -> None:
    rig = Rig(readable=0b101, writable=0b011)
    try:
        rig.buf[:len(message)] = message
        result = rig.server.answer(0, len(message))
        ours = rig.replies()
        py_reply = bytearray(40)
        calls: list[tuple[int, ...]] = []

        def read(region: int, offset: int, count: int) -> int:
            calls.append((region, offset, count))
            return 0x11223344_55667788 & ((1 << (8 * count)) - 1)

        length = answer_read(message, 0, len(message), py_reply, read, {0, 2})
        expected = bytes(py_reply[:length])
        if not length:  # what ClientConnection._fast_write takes
            access = parse_request(message, 0, len(message))
            if access is not None and access[1] == 10 and access[3] in (0, 1):
                msg_id, _c, posted, region, offset, count, value = access
                calls.append((region, offset, count, value))
                if not posted:
                    expected = write_reply(msg_id, region, offset, count)
        if calls:
            assert result == native.DONE
            assert rig.calls == calls
            assert ours == expected
        else:
            assert result == (native.SLOW, 0, len(message), None, 0)
            assert rig.calls == [] and ours == b""
    finally:
        rig.close()


# ------------------------------------------------------------------ the reactor's wait


def test_poll_answers_its_servers_and_returns_what_python_must_run(rig: Rig) -> None:
    assert C is not None
    epoll = select.epoll()
    r, w = os.pipe()
    try:
        epoll.register(rig.ours.fileno(), select.EPOLLIN)
        epoll.register(r, select.EPOLLIN)
        fast = {rig.ours.fileno(): rig.server}
        rig.send(read_msg(1, 0, 0x18, 4))
        assert C.poll(epoll.fileno(), 1.0, fast, rig.lock) == []  # answered inside
        assert rig.replies() == read_reply(1, 0, 0x18, 4, 0x55667788)
        assert rig.lock.held == 0 and rig.timers == 0  # the loop runs its own timers
        os.write(w, b"x")
        assert C.poll(epoll.fileno(), 1.0, fast, None) == [r]  # not a fast fd
        os.read(r, 1)
        rig.send(UNUSUAL["another command"])
        assert C.poll(epoll.fileno(), 1.0, fast, None) == [rig.ours.fileno()]
        assert rig.server.take() == (native.SLOW, 0, 32, None, 0)
        rig.fail[0x18] = OSError(errno.EIO, "backend gone")
        rig.send(read_msg(2, 0, 0x18, 4))
        assert C.poll(epoll.fileno(), 1.0, fast, None) == [rig.ours.fileno()]
        result = rig.server.take()
        assert result[0] == native.FAILED and result[3] is rig.fail[0x18]
        rig.fail[0x18] = KeyboardInterrupt("not an Exception: never kept in a result")
        rig.send(read_msg(3, 0, 0x18, 4))
        assert C.poll(epoll.fileno(), 1.0, fast, None) == [rig.ours.fileno()]
        with pytest.raises(KeyboardInterrupt, match="never kept"):
            rig.server.take()  # raised where the callback runs, not inside the wait
        assert C.poll(epoll.fileno(), 0.0, fast, None) == []  # nothing left, no wait
        assert rig.server.take() == native.AGAIN
    finally:
        epoll.close()
        os.close(r)
        os.close(w)


def test_poll_keeps_an_untaken_result_and_does_not_serve_past_it(rig: Rig) -> None:
    assert C is not None
    epoll = select.epoll()
    try:
        epoll.register(rig.ours.fileno(), select.EPOLLIN)
        fast = {rig.ours.fileno(): rig.server}
        rig.send(UNUSUAL["another command"])
        assert C.poll(epoll.fileno(), 1.0, fast, None) == [rig.ours.fileno()]
        rig.send(read_msg(2, 0, 0x18, 4))
        # The first result is not taken yet: the fd is handed to Python again, unread.
        assert C.poll(epoll.fileno(), 1.0, fast, None) == [rig.ours.fileno()]
        assert rig.calls == []
        assert rig.server.take()[:3] == (native.SLOW, 0, 32)
        assert rig.server.take() == native.DONE  # then the read, in order
        assert rig.replies() == read_reply(2, 0, 0x18, 4, 0x55667788)
    finally:
        epoll.close()


def test_poll_waits_on_while_it_answers_everything(rig: Rig) -> None:
    """Given the timer heap, poll does not come back to Python for accesses it answered:
    only for an fd Python must serve, a change of the heap, or its timeout."""
    assert C is not None
    epoll = select.epoll()
    r, w = os.pipe()
    heap: list[object] = [object()]
    try:
        epoll.register(rig.ours.fileno(), select.EPOLLIN)
        epoll.register(r, select.EPOLLIN)
        fast = {rig.ours.fileno(): rig.server}

        def later() -> None:
            for msg_id in (1, 2, 3):
                rig.peer.sendall(read_msg(msg_id, 0, 0x18, 4))
                assert len(rig.peer.recv(64)) == 36  # answered inside the same poll
            os.write(w, b"x")

        feeder = threading.Thread(target=later, daemon=True)
        feeder.start()
        assert C.poll(epoll.fileno(), 10.0, fast, None, heap) == [r]
        feeder.join(5)
        assert rig.server.answered == 3
        os.read(r, 1)

        def schedules(region: int, offset: int, count: int) -> int:
            heap.insert(0, object())  # as reactor.call_later from inside a model
            return 0

        server = C.Server(fd=rig.ours.fileno(), buf=rig.buf, reply=rig.reply, read=schedules,
                          write=rig.write, readable=1, writable=1, refused=Refused,
                          anc_size=64, conn=rig.conn, lock=rig.lock,
                          due_timers=rig.due_timers)
        rig.send(read_msg(4, 0, 0x18, 4))
        assert C.poll(epoll.fileno(), 10.0, {rig.ours.fileno(): server}, None, heap) == []
        assert server.answered == 1  # back at once, for the reactor to plan its wait
        assert C.poll(epoll.fileno(), 0.05, fast, None, heap) == []  # the timeout ends it
    finally:
        epoll.close()
        os.close(r)
        os.close(w)


def test_run_forever_serves_clients_in_c(tmp_path: Path) -> None:
    """``platpass serve``'s loop: trapped accesses are answered inside the reactor's wait,
    and what the C path hands back (a refused access) still gets the codec's errno."""
    reactor = EpollReactor()
    reactor.allow_helpers()  # so that a timer added from this thread wakes the loop
    server = VfioUserServer(reactor)
    device = open_device(reactor, "arm,pl011")
    server.serve("uart", device, tmp_path / "uart.sock")
    thread = threading.Thread(target=reactor.run_forever)
    thread.start()
    try:
        with VfioUserClient.connect(tmp_path / "uart.sock") as client:
            for _ in range(20):
                assert client.read(0, 0x48, 4) == 0
            with pytest.raises(VfioError) as info:
                client.read(0, 0x1000, 4)
            assert info.value.errno == errno.EINVAL
            client.write(0, 0x48, 4, 0)
            (conn,) = server.clients
            assert conn._native.answered == 21
    finally:
        reactor.call_later(0, reactor.stop)
        thread.join(10)
        server.close()
        device.close()
        reactor.close()
    assert not thread.is_alive()


# ------------------------------------------------------------------ the client's round trip


class FakeServer:
    """The far end of a client's socket, answering what the test says."""

    def __init__(self) -> None:
        self.client, self.server = socket.socketpair()

    def request(self, size: int = ACCESS_SIZE) -> tuple[int, ...]:
        return ACCESS.unpack_from(self.server.recv(size))

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def far() -> object:
    made = FakeServer()
    yield made
    made.close()


def test_roundtrip_read_and_write(far: FakeServer) -> None:
    assert C is not None
    far.server.sendall(read_reply(5, 2, 0x40, 2, 0xABCD))
    assert C.roundtrip(far.client.fileno(), 5, 2, 0x40, 2) == 0xABCD
    assert far.request() == (5, 9, 32, 0, 0, 0x40, 2, 2)
    far.server.sendall(write_reply(6, 0, 0x8, 8))
    assert C.roundtrip(far.client.fileno(), 6, 0, 0x8, 8, 2**64 - 1) == 0
    assert far.server.recv(64) == write_msg(6, 0, 0x8, 8, 2**64 - 1)
    assert C.roundtrip(far.client.fileno(), 7, 0, 0x8, 1, 0x5A, True) is None
    assert far.server.recv(64) == write_msg(7, 0, 0x8, 1, 0x5A, posted=True)


def test_roundtrip_hands_back_anything_but_its_successful_reply(far: FakeServer) -> None:
    assert C is not None
    err = bytearray(32)
    n = pack_error_reply(err, 5, 9, errno.EINVAL)
    far.server.sendall(bytes(err[:n]) + b"next")
    # one receive, handed over whole: the codec frames the error reply and what follows
    assert C.roundtrip(far.client.fileno(), 5, 0, 0, 4) == bytes(err[:n]) + b"next"
    far.server.sendall(read_reply(6, 0, 0, 4, 1) + b"more")
    assert C.roundtrip(far.client.fileno(), 6, 0, 0, 4) == read_reply(6, 0, 0, 4, 1) + b"more"
    far.server.sendall(read_reply(4, 0, 0, 4, 1))  # another id
    assert C.roundtrip(far.client.fileno(), 5, 0, 0, 4) == read_reply(4, 0, 0, 4, 1)
    big = struct.pack("=HHIII", 1, 11, 16 + 64, 0, 0) + bytes(64)  # a DMA_READ, say
    far.server.sendall(big)
    assert C.roundtrip(far.client.fileno(), 6, 0, 0, 4) == big[:40]  # the codec reads on
    assert far.client.recv(128) == big[40:]
    far.server.shutdown(socket.SHUT_WR)
    assert C.roundtrip(far.client.fileno(), 7, 0, 0, 4) == b""


def test_roundtrip_refuses_what_is_not_one_access(far: FakeServer) -> None:
    assert C is not None
    with pytest.raises(ValueError):
        C.roundtrip(far.client.fileno(), 1, 0, 0, 3)
    with pytest.raises(ValueError):
        C.roundtrip(far.client.fileno(), 1, 0, 2, 4)
    with pytest.raises(ValueError):
        C.roundtrip(far.client.fileno(), 1, 0, 0, 1, 0x100)
    with pytest.raises(ValueError):
        C.roundtrip(far.client.fileno(), 1, 0, 0, 4, None, True)
    far.server.setblocking(False)
    with pytest.raises(BlockingIOError):
        far.server.recv(64)  # nothing was sent


@pytest.mark.parametrize(("msg_id", "region", "offset", "value"), [
    (1, 0, 2**64 + 0x48, None),  # wrapped, this would read register 0x48
    (1, 0, 2**64 + 0x48, 1),
    (1, 0, -4, None),
    (1, 2**32, 0x48, 1),  # region 0
    (1, -1, 0x48, None),
    (2**16 + 1, 0, 0x48, None),
    (1, 0, 0x48, -1),
])
def test_roundtrip_refuses_a_field_that_does_not_fit(far: FakeServer, msg_id: int,
                                                     region: int, offset: int,
                                                     value: int | None) -> None:
    """As the Python path's struct.pack does: never a wrapped field, nothing sent."""
    assert C is not None
    # a request sent anyway would wait for its reply: not for long
    far.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 0, 50_000))
    with pytest.raises(OverflowError):
        C.roundtrip(far.client.fileno(), msg_id, region, offset, 4, value)
    with pytest.raises(OverflowError):
        C.roundtrip(far.client.fileno(), 1, 0, 0x48, 2**32 + 4)  # count 4, wrapped
    far.server.setblocking(False)
    with pytest.raises(BlockingIOError):
        far.server.recv(64)  # nothing was sent


def test_roundtrip_takes_a_write_reply_as_the_python_client_does(far: FakeServer) -> None:
    """region_access.is_write_reply does not hold a write's reply to its count; neither
    does the C round trip (the same reply is accepted on both paths)."""
    assert C is not None
    far.server.sendall(write_reply(6, 0, 0x8, 2))
    assert C.roundtrip(far.client.fileno(), 6, 0, 0x8, 4, 1) == 0
    reply = bytearray(write_reply(6, 0, 0x8, 2))
    assert is_write_reply(reply, len(reply), 6)


class Alarm(Exception):
    """What the test's SIGALRM handler raises."""


def test_roundtrip_runs_a_signal_handler_while_it_waits(far: FakeServer) -> None:
    """As socket.recv_into (the Python path) does: a handler that raises (Ctrl-C's
    KeyboardInterrupt) interrupts the wait for a reply at once, instead of surfacing
    only after the receive timeout, behind an OSError the client takes for a lost
    connection."""
    assert C is not None
    far.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("@ll", 2, 0))

    def handler(_signum: int, _frame: object) -> None:
        raise Alarm

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Alarm) as info:
            C.roundtrip(far.client.fileno(), 1, 0, 0x48, 4)
        assert info.value.__context__ is None  # not raised while handling a timeout
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_roundtrip_timeout_is_an_oserror(far: FakeServer) -> None:
    assert C is not None
    sec_usec = struct.pack("@ll", 0, 50_000)
    # SO_RCVTIMEO, as VfioUserClient.connect sets its timeout
    far.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, sec_usec)
    with pytest.raises(OSError) as info:
        C.roundtrip(far.client.fileno(), 1, 0, 0, 4)
    assert info.value.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


# ------------------------------------------------------------------ through the real server


def test_a_served_client_is_answered_in_c(tmp_path: Path) -> None:
    """With the module there, ``VfioUserServer`` and ``VfioUserClient`` take it: every
    trapped access of a negotiated client is answered by the C loop."""
    reactor = EpollReactor()
    server = VfioUserServer(reactor)
    device = open_device(reactor, "arm,pl011")
    server.serve("uart", device, tmp_path / "uart.sock")
    thread = threading.Thread(target=reactor.run_until, args=(lambda: stop.is_set(), 30))
    stop = threading.Event()
    thread.start()
    try:
        with VfioUserClient.connect(tmp_path / "uart.sock") as client:
            assert client._roundtrip is not None
            for _ in range(50):
                assert client.read(0, 0x48, 4) == 0  # UARTDMACR: trapped, reads as zero
            client.post_write(0, 0x48, 4, 0)
            client.write(0, 0x48, 4, 0)
            (conn,) = server.clients
            assert conn._native is not None and conn._native.answered == 52
            with pytest.raises(VfioError):
                client.read(0, 0x1000, 4)  # past the region: the codec's errno
            assert client.read(0, 0x48, 4) == 0  # and the C path goes on
            assert conn._native.answered == 53
    finally:
        stop.set()
        thread.join(10)
        server.close()
        device.close()
        reactor.close()


def test_disabled_by_the_environment() -> None:
    import subprocess
    import sys

    code = "from platpass.vfio_user import native; print(native.describe())"
    env = dict(os.environ, PLATPASS_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "Python fast path (disabled by PLATPASS_NATIVE=0)"
    env["PLATPASS_NATIVE"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "C fast path"
