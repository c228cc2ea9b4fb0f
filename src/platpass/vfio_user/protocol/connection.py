"""Framing of a vfio-user byte stream, sans I/O (h11 style).

The caller feeds what a socket delivered — ``receive_data(bytes, fds)`` — and pulls
events with ``next_event()`` until it returns :data:`NEED_DATA`. ``send_message`` turns
a message into the bytes and fds to write. Nothing here touches a socket.

**Which message owns an fd.** On an ``AF_UNIX`` stream socket the kernel hands
SCM_RIGHTS fds to the ``recvmsg`` that returns the first byte of the ``sendmsg`` that
carried them; a sender attaches a message's fds to that message's first byte. So a batch
of fds received with a chunk of bytes belongs to the first message that *starts* inside
that chunk, or, if none starts there, to the message the chunk continues. The framer
records each batch with the stream positions of its chunk and hands it to the owner.

**Errors.** A header whose size field is smaller than a header leaves no way to find the
next message: the connection goes to :attr:`State.ERROR` and ``next_event`` raises
:class:`RemoteProtocolError`. An oversized message (bigger than ``max_message_size``) is
reported as :class:`Rejected` with ``E2BIG`` as soon as its header is in, and its body is
then skipped without being buffered — the stream stays in sync. Misusing the API
(sending after ERROR) raises :class:`LocalProtocolError`.

**fds held are bounded.** fds wait in the framer only until the message that owns them
is complete. A message may carry at most ``max_fds``; a peer that sends more fds for a
message it has not finished (e.g. many 1-byte chunks each with fds, a message that never
completes) can never be legitimate, so once the fds held for incomplete messages exceed
``max_fds`` (checked whenever :meth:`next_event` runs out of complete messages), or the
fds held at all exceed ``2 * max_fds`` (checked on every :meth:`receive_data`, whatever
the caller's pull cadence), every held fd is closed and the stream goes to ERROR: the
caller drops the peer. fds that arrive inside the body of a skipped (oversized) message
have no owner and are closed at once. Callers pull events after every ``receive_data``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import deque
from dataclasses import dataclass
from enum import Enum

from platpass.errors import LocalProtocolError, RemoteProtocolError
from platpass.vfio_user.protocol.header import HEADER, HEADER_SIZE, Header


class State(Enum):
    """Framing state of one connection."""

    OPEN = "open"
    ERROR = "error"  # the stream cannot be resynchronised; close the connection
    CLOSED = "closed"  # the peer closed its end (EOF seen)


class _NeedData:
    """Sentinel type: ``next_event`` has nothing complete to return yet."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class Message:
    """One complete message: header, payload bytes and the fds it carried.

    The receiver owns ``fds`` from now on and must close the ones it does not keep.
    """

    header: Header
    payload: bytes
    fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the framer refused without buffering it (only its header is known).

    ``errno`` is what a server replies with; ``fds`` are the descriptors it carried
    (the receiver must close them).
    """

    header: Header
    errno: int
    reason: str
    fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its end; ``partial`` is True if a message was cut short."""

    partial: bool


Event = Message | Rejected | ConnectionClosed


@dataclass(slots=True)
class _FdBatch:
    start: int  # stream position of the first byte of the chunk the fds came with
    end: int  # stream position just past that chunk
    fds: list[int]
    truncated: bool


class Connection:
    """One side of a vfio-user stream. Not thread-safe.

    ``max_message_size`` bounds a message the peer may send us (header included);
    ``max_fds`` bounds the fds one message may carry (more is reported as
    :class:`Rejected` with EINVAL, and all its fds are handed over for closing).
    """

    def __init__(self, *, max_message_size: int = 1 << 20, max_fds: int = 8) -> None:
        self.max_message_size = max_message_size
        self.max_fds = max_fds
        self.state = State.OPEN
        self._buffer = bytearray()
        self._buffer_start = 0  # stream position of _buffer[0]
        self._received = 0  # stream position just past the last byte received
        self._skip = 0  # bytes of an oversized message still to discard
        self._batches: deque[_FdBatch] = deque()
        self._eof = False
        self._events: deque[Event] = deque()
        self.error: RemoteProtocolError | None = None
        self._skip_end = 0  # stream position where the skipped message ends

    @property
    def idle(self) -> bool:
        """True when nothing is buffered, skipped or pending: the next bytes start a
        fresh message (the server's fast path relies on it)."""
        return (self.state is State.OPEN and not self._buffer and not self._skip
                and not self._events and not self._batches)

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes | bytearray | memoryview, fds: list[int] | tuple[int, ...]
                     = (), *, fds_truncated: bool = False) -> None:
        """Feed bytes (and the fds received with them). Empty ``data`` means EOF.

        ``fds_truncated`` says the kernel dropped fds that did not fit (MSG_CTRUNC): the
        owning message is then rejected with EINVAL. In ERROR or after EOF, incoming fds
        are closed at once (nobody would ever own them).
        """
        if self.state is not State.OPEN or self._eof:
            self._close_fds(fds)
            if data and self._eof:
                raise LocalProtocolError("data received after EOF")
            return
        if not data:
            self._eof = True
            if fds:
                self._close_fds(fds)
            return
        start = self._received
        self._received += len(data)
        if self._skip and len(data) <= self._skip and fds:
            # The whole chunk lies inside the body of a rejected message: its fds have
            # no owner (the rejection already handed over the message's own fds).
            self._close_fds(fds)
            fds = ()
        if fds or fds_truncated:
            self._batches.append(_FdBatch(start, self._received, list(fds), fds_truncated))
            if self.held_fds > 2 * self.max_fds:
                self._poison(RemoteProtocolError(
                    errno.EMFILE, f"peer sent {self.held_fds} fds for messages it has not "
                    f"finished (at most {self.max_fds} per message)"))
                return
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = memoryview(data)[taken:]
            self._buffer_start += taken
            if not self._skip:
                self._finish_skipped()
        self._buffer += data

    def next_event(self) -> Event | _NeedData:
        """The next complete event, or :data:`NEED_DATA`.

        Raises RemoteProtocolError once the stream is unresynchronisable (state ERROR).
        """
        if self._events:
            return self._events.popleft()
        if self.state is State.ERROR:
            assert self.error is not None
            raise self.error
        if self.state is State.CLOSED:
            return ConnectionClosed(partial=False)
        if self._skip:
            return self._eof_or_need()
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            return self._eof_or_need()
        msg_id, command, size, flags, err = HEADER.unpack_from(buffer)
        header = Header(msg_id, command, size, flags, err)
        if size < HEADER_SIZE:
            return self._fail(RemoteProtocolError(
                errno.EINVAL, f"message size {size} is smaller than the 16-byte header"))
        msg_start = self._buffer_start
        if size > self.max_message_size:
            # Reject on the header alone (a peer may wait for the answer before sending
            # the body), then skip the body without buffering it: the stream stays in sync.
            have = len(buffer)
            del buffer[:have if have < size else size]
            self._buffer_start += min(have, size)
            self._skip = max(size - have, 0)
            fds, _truncated = self._claim_fds(msg_start, msg_start + size)
            self._skip_end = msg_start + size
            if not self._skip:
                self._finish_skipped()
            return Rejected(
                header, errno.E2BIG,
                f"message of {size} bytes exceeds the limit of {self.max_message_size}",
                tuple(fds))
        if len(buffer) < size:
            return self._eof_or_need()
        payload = bytes(buffer[HEADER_SIZE:size])
        del buffer[:size]
        self._buffer_start += size
        fds, truncated = self._claim_fds(msg_start, msg_start + size)
        if truncated or len(fds) > self.max_fds:
            return Rejected(header, errno.EINVAL,
                            f"message carried more than {self.max_fds} fds", tuple(fds))
        return Message(header, payload, tuple(fds))

    @property
    def held_fds(self) -> int:
        """fds received and not yet handed out with an event."""
        return sum(len(batch.fds) for batch in self._batches)

    def _finish_skipped(self) -> None:
        """The skipped body is over: fds that came with it have no owner; close them."""
        end, self._skip_end = self._skip_end, 0
        while self._batches and self._batches[0].end <= end:
            self._close_fds(self._batches.popleft().fds)

    def _eof_or_need(self) -> Event | _NeedData:
        if not self._eof:
            if self._batches and self.held_fds > self.max_fds:
                # Every complete message is out: what is held belongs to the one being
                # received, which may carry no more than max_fds.
                return self._fail(RemoteProtocolError(
                    errno.EMFILE, f"peer sent {self.held_fds} fds for a message it has "
                    f"not finished (at most {self.max_fds} per message)"))
            return NEED_DATA
        partial = bool(self._buffer) or bool(self._skip)
        self.state = State.CLOSED
        self._buffer.clear()
        for batch in self._batches:
            self._close_fds(batch.fds)
        self._batches.clear()
        return ConnectionClosed(partial=partial)

    def _claim_fds(self, start: int, end: int) -> tuple[list[int], bool]:
        """fds owned by the message at stream positions [start, end) (see module doc)."""
        owned: list[int] = []
        truncated = False
        while self._batches:
            batch = self._batches[0]
            if batch.start <= start or (batch.start < end and batch.end <= end):
                owned.extend(batch.fds)
                truncated = truncated or batch.truncated
                self._batches.popleft()
            else:
                break
        return owned, truncated

    def discard(self) -> None:
        """Drop everything buffered and close every fd not yet handed out (the transport
        is going away); the connection is CLOSED afterwards."""
        self.state = State.CLOSED
        self._buffer.clear()
        for batch in self._batches:
            self._close_fds(batch.fds)
        self._batches.clear()
        for event in self._events:
            if not isinstance(event, ConnectionClosed):
                self._close_fds(event.fds)
        self._events.clear()

    def _fail(self, error: RemoteProtocolError) -> Event | _NeedData:
        self._poison(error)
        raise error

    def _poison(self, error: RemoteProtocolError) -> None:
        """Go to ERROR: nothing buffered is kept, every held fd is closed."""
        self.state = State.ERROR
        self.error = error
        self._buffer.clear()
        self._skip = 0
        for batch in self._batches:
            self._close_fds(batch.fds)
        self._batches.clear()

    @staticmethod
    def _close_fds(fds: list[int] | tuple[int, ...]) -> None:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------------ sending

    def send_message(self, header: Header, payload: bytes = b"",
                     fds: tuple[int, ...] = ()) -> bytes:
        """The wire bytes of one message (``fds`` go with its first byte).

        Raises LocalProtocolError if the header size disagrees with the payload, or the
        connection can no longer be used.
        """
        if self.state is State.ERROR:
            raise LocalProtocolError("connection is in ERROR; close it")
        if header.size != HEADER_SIZE + len(payload):
            raise LocalProtocolError(
                f"header size {header.size} != 16 + payload {len(payload)}")
        return header.encode() + payload
