"""The vfio-user socket loop: one listening AF_UNIX socket per device, one reactor for all.

Transport decisions (the specification leaves them to the server):

* ``AF_UNIX`` + ``SOCK_STREAM``, as the specification and every client use. fds travel as
  SCM_RIGHTS with the first byte of the message that owns them (see
  :mod:`platpass.vfio_user.protocol.connection`).
* **One client per device at a time.** A second client is accepted and closed at once,
  before anything is read from it: it sees end-of-file (its VERSION gets no reply). The
  device and its current client are not disturbed. A current client whose peer has
  already shut down (EOF not yet read) is processed and closed first, so a client
  connecting right after the previous one left is never refused as a "second client".
* **Peer check before any message.** With an allow-list (uids and/or gids), a peer whose
  SO_PEERCRED uid is not listed and whose gid is not listed is closed right after accept.
* **Sockets are created 0600**, owner/group/mode configurable, without ever acting on a
  path another user could swap (:func:`platpass.host.safepath.bind_unix_socket`): bound
  and given its owner inside a private directory, listening before its name appears, and
  unlinked on exit only while the name still holds that socket. A stale socket file
  (nobody listening) is replaced; a live one is an error.
* **Non-blocking everywhere.** Replies that do not fit in the socket buffer are queued and
  flushed when the socket becomes writable; while a client has unsent output, its input is
  not read (so a client that never reads cannot make the server buffer without bound). A
  slow or hostile client therefore only stalls itself; other devices keep being served by
  the same loop.
* **Bounded fds.** The framer holds fds only for the message being received, at most
  ``max_msg_fds`` of them (two messages' worth between pulls); a client that sends more
  is dropped and the fds closed (also inside a skipped oversized message). An accept that
  fails for lack of fds pauses that listening socket with a growing delay (one warning per
  episode) instead of spinning; connected clients keep being served.
* **Logs a peer can repeat are rate-limited** (:class:`platpass.lograte.LogLimiter`): per
  client (unsolicited replies, refused commands, backend failures) and per device
  (refused peers, second clients, broken streams), at most 10 lines of a kind per 10 s;
  how many were suppressed is logged after the window and when the client leaves.
* **A client must negotiate** (VERSION) within ``negotiation_timeout`` (10 s) of connecting,
  or it is disconnected: a silent peer cannot keep the device from its real client.
* **Disconnect** (EOF, reset, or an unresynchronisable stream): the connection is closed
  and ``device.client_gone()`` closes the client's IRQ fds and forgets its DMA maps; the
  device's register state is kept for the next client (spec, "Client Disconnection").
* **A client on a thread of its own** (``client_threads``, on in ``serve``, ``up`` and
  workers): up to that many negotiated clients are each served by a thread that waits in
  a blocking ``recvmsg`` on its socket instead of by the loop, so a trapped access costs
  no ``epoll_wait`` and no dispatch (a REGION_READ round trip ~15% faster in
  ``bench/mmio.py``). The thread handles every chunk under the loop's lock (the loop
  takes it while it dispatches), so the device, its timers and the session still see one
  caller at a time, in the socket's order; the loop keeps everything else (interrupt fds,
  timers, other clients, the control socket). A client whose replies back up is given
  back to the loop; a disconnect, or the server closing (which shuts the socket down to
  wake the receive), ends the thread, which closes the socket.
* Hot path: REGION_READ/REGION_WRITE messages of one access arriving without fds are
  parsed straight from the receive buffer by the codec's fast path
  (:mod:`platpass.vfio_user.protocol.region_access`), one after another while the chunk
  holds them, and answered from a preallocated reply buffer; the first message that is
  anything else, and all that follow it in the chunk, go through the full codec.
* **Posted writes** (REGION_WRITE with the no-reply flag, and any no-reply command) are
  processed in arrival order like every other message, so a later read or SET_IRQS sees
  their effect; nothing is sent back. One that fails is counted
  (``Session.failed_posted``, ``DeviceEndpoint.failed_posted_writes``) and logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platpass.errors import HostError, PlatpassError, RemoteProtocolError, VfioError
from platpass.host.safepath import SocketFile, bind_unix_socket
from platpass.lograte import LogLimiter
from platpass.reactor import EpollReactor, ListenerBackoff
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import RegionFlags
from platpass.vfio_user.native import CLOSED, FAILED, NATIVE, RECV_FAILED, SLOW
from platpass.vfio_user.protocol.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Message,
    Rejected,
)
from platpass.vfio_user.protocol.header import Command
from platpass.vfio_user.protocol.region_access import (
    ACCESS,
    ACCESS_SIZE,
    BUFFER_SIZE,
    answer_read,
    pack_error_reply,
    pack_write_reply,
    parse_request,
)
from platpass.vfio_user.scm_rights import (
    AncillaryItem,
    ancillary_space,
    received_fds,
    rights,
)
from platpass.vfio_user.session import Limits, Reply, Session

log = logging.getLogger(__name__)

_UCRED = struct.Struct("=iII")  # pid, uid, gid
_RECV_SIZE = 1 << 16
_REGION_READ = int(Command.REGION_READ)
#: Every receive of the loop and every send is non-blocking by flag: the socket itself is
#: blocking while a client is served on its own thread, whose receive waits.
_DONTWAIT = socket.MSG_DONTWAIT
#: Reads a closed peer's leftover input may take when a new client waits (64 x 64 KiB).
_SETTLE_READS = 64
#: Seconds a client's own thread gets to take a closed peer's leftovers and EOF when a new
#: client waits for the device.
_SETTLE_WAIT = 1.0

#: A connection's ``_native.Server`` (a C type, untyped here).
_NativeServer = Any


def _mask(regions: frozenset[int]) -> int:
    """The region indexes as a bit mask (the C path answers regions 0-63 only)."""
    return sum(1 << r for r in regions if r < 64)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """How a device's socket is created and who may connect.

    ``allow_uids``/``allow_gids``: when either is non-empty, a peer is accepted only if
    its uid or its gid is listed.
    """

    mode: int = 0o600
    owner: int | None = None
    group: int | None = None
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    #: The user a privilege-separated server runs as: its socket directory may be theirs.
    server_uid: int | None = None

    def allows(self, uid: int, gid: int) -> bool:
        if not self.allow_uids and not self.allow_gids:
            return True
        return uid in self.allow_uids or gid in self.allow_gids


class ClientConnection:
    """One connected client of one device."""

    def __init__(self, server: VfioUserServer, endpoint: DeviceEndpoint,
                 sock: socket.socket) -> None:
        self.server = server
        self.endpoint = endpoint
        self.sock = sock
        self.fd = sock.fileno()
        limits = endpoint.limits
        self.session = Session(endpoint.device, limits,
                               limiter=LogLimiter(log, source=f"client of {endpoint.name}"))
        self.framer = Connection(max_message_size=limits.max_message_size,
                                 max_fds=limits.max_msg_fds)
        self._anc_size = ancillary_space(limits.max_msg_fds)
        self._buf = bytearray(_RECV_SIZE)
        self._bufs = [self._buf]
        self._view = memoryview(self._buf)
        self._reply = bytearray(BUFFER_SIZE)
        reply_view = memoryview(self._reply)
        #: length -> the first ``length`` bytes of the reply buffer (no slicing per reply).
        self._reply_views = {n: reply_view[:n] for n in range(BUFFER_SIZE + 1)}
        self._recvmsg_into = sock.recvmsg_into
        self._send = sock.send
        #: The thread this client is served on (``VfioUserServer(client_threads=N)``).
        self._thread: threading.Thread | None = None
        self._fast_ok = False  # set once VERSION has been negotiated
        #: The C fast path of this connection (``_native.Server``), made at negotiation.
        self._native: _NativeServer | None = None
        #: negotiated and nothing held by the framer: the next chunk may take the fast path
        self._fast_ready = False
        self._out: deque[tuple[memoryview, tuple[int, ...]]] = deque()
        self.closed = False
        # A peer that never negotiates must not hold the device (one client at a time).
        self._version_timer = server.reactor.call_later(server.negotiation_timeout,
                                                        self._negotiation_expired)
        # Fast-path facts about the device (fixed for its life).
        device = endpoint.device
        self._read = device.read
        self._write = device.write
        flags = self.session.region_flags
        self._readable = frozenset(i for i, f in enumerate(flags) if f & RegionFlags.READ)
        self._writable = frozenset(i for i, f in enumerate(flags) if f & RegionFlags.WRITE)

    # ------------------------------------------------------------------ input

    def on_readable(self) -> None:
        native = self._native
        if native is not None:
            try:
                result = native.take()  # what the reactor's fast poll kept, or a receive
            except Exception:  # never let one connection take the shared loop down
                log.exception("client of %s: unexpected failure; closing it",
                              self.endpoint.name)
                self.close()
                return
            if type(result) is int:  # DONE, or AGAIN: nothing more to do
                return
            self._native_stopped(result)
            return
        try:
            nbytes, ancdata, msg_flags, _addr = self._recvmsg_into(self._bufs,
                                                                   self._anc_size, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._receive_failed(err)
            return
        self._received(nbytes, ancdata, msg_flags)

    def _receive_failed(self, err: OSError) -> None:
        self.endpoint.log.info("client of %s: receive failed: %s", self.endpoint.name, err,
                               extra={"device": self.endpoint.name, "errno": err.errno,
                                      "event": "error"})
        self.close()

    def _received(self, nbytes: int, ancdata: list[AncillaryItem], msg_flags: int) -> None:
        # One frame for the hot path: the fast path, or the framer.
        try:
            start = 0
            if self._fast_ready and nbytes >= ACCESS_SIZE and not ancdata and not msg_flags:
                start = self._fast_path(nbytes)
                if start == nbytes or self.closed:
                    return
            self._to_framer(start, nbytes, ancdata, msg_flags)
        except Exception:  # never let one connection take the shared loop down
            log.exception("client of %s: unexpected failure; closing it", self.endpoint.name)
            self.close()

    def _to_framer(self, start: int, nbytes: int, ancdata: list[AncillaryItem],
                   msg_flags: int) -> None:
        """The full codec path for ``buf[start:nbytes]`` and the fds that came with it."""
        fds = received_fds(ancdata)
        truncated = bool(msg_flags & socket.MSG_CTRUNC)
        try:
            self.framer.receive_data(self._view[start:nbytes], fds, fds_truncated=truncated)
        except Exception:
            _close_fds(fds)
            raise
        self._drain_events()
        if self.session.negotiated and not self._fast_ok:
            self._fast_ok = True
            self._version_timer.cancel()
            if self.server.native and not self.closed:
                self._native = self._make_native()
                if self.server.reactor.watching(self.fd):  # not back-pressured
                    self.server.reactor.add_reader(self.fd, self.on_readable, self._native)
            if len(self.server.threaded) < self.server.client_threads:
                self._start_thread()
        # The fast path may take the next chunk only when the framer holds nothing: the
        # chunk then starts a message.
        self._fast_ready = self._fast_ok and not self.closed and self.framer.idle

    def _make_native(self) -> _NativeServer:
        assert NATIVE is not None
        reactor = self.server.reactor
        native: _NativeServer = NATIVE.Server(
            fd=self.fd, buf=self._buf, reply=self._reply, read=self._read,
            write=self._write, readable=_mask(self._readable),
            writable=_mask(self._writable), refused=VfioError, anc_size=self._anc_size,
            conn=self, lock=reactor.lock, due_timers=reactor.run_due_timers)
        return native

    def _native_stopped(self, result: tuple[Any, ...]) -> None:
        """Carry on where the C fast path stopped (``result`` says where and why), as
        :meth:`_received` and :meth:`_fast_path` would have from there; the C loop then
        takes the rest of the chunk again while nothing waits to be sent."""
        try:
            self._native_carry_on(result)
        except Exception:  # never let one connection take the shared loop down
            log.exception("client of %s: unexpected failure; closing it", self.endpoint.name)
            self.close()

    def _native_carry_on(self, result: Any) -> None:
        native = self._native
        while True:
            code = result[0]
            if code == RECV_FAILED:
                self._receive_failed(OSError(result[1], os.strerror(result[1])))
                return
            _code, at, nbytes, extra, flag = result
            if code == CLOSED:  # closed meanwhile: what came is dropped, fds too
                _close_fds(received_fds(extra))
                return
            if code == SLOW:
                self._to_framer(at, nbytes, extra or [], flag)
                return
            if code == FAILED:
                at = self._native_failed(at, extra, bool(flag))
            else:  # UNSENT: the reply of the access that ends at ``at``
                self._send_rest(self._reply_views[extra], flag)
            if self.closed or at >= nbytes:
                return
            if self._out or native is None:  # back-pressured: the Python path queues
                start = self._fast_path(nbytes, at)
                if start < nbytes and not self.closed:
                    self._to_framer(start, nbytes, [], 0)
                return
            result = native.answer(at, nbytes)
            if type(result) is int:  # DONE
                return

    def _native_failed(self, at: int, err: BaseException, posted: bool) -> int:
        """The access at ``buf[at:]`` raised ``err`` in the device, called from C: a
        backend failure is answered as :meth:`_fast_path` answers it; anything else is a
        bug and propagates. Returns where the next message starts."""
        if not isinstance(err, HostError | OSError):
            raise err
        _id, command, _s, _f, _e, _o, _r, count = ACCESS.unpack_from(self._buf, at)
        length = self._backend_failed(command, posted, at, err)
        if length:
            self._send_now(self._reply_views[length])
        return at + ACCESS_SIZE + (count if command != _REGION_READ else 0)

    def _fast_path(self, nbytes: int, at: int = 0) -> int:
        """Answer the single-access REGION_READ/WRITE messages at the start of the
        receive buffer directly; returns where the first message it did not answer
        starts (``nbytes`` when it answered them all).

        A message it does not answer (anything unusual, or an access the device refuses)
        is left, with everything after it, to the full codec, which gives the full checks
        and error replies. The device checks region, bounds and alignment itself (and
        remembers each valid access's route), so the only check made here is the region's
        READ/WRITE flag, the one the device does not know about. A read, the access a
        guest waits for, is one codec call (:func:`answer_read`); anything else is parsed
        by :func:`parse_request` first.
        """
        buf = self._buf
        reply = self._reply
        while at < nbytes:
            try:
                length = answer_read(buf, at, nbytes, reply, self._read, self._readable)
            except VfioError:
                return at  # the device refused before acting: the full path replies
            except (HostError, OSError) as err:
                length = self._backend_failed(_REGION_READ, False, at, err)
                at += ACCESS_SIZE
            else:
                if length:
                    at += ACCESS_SIZE
                else:  # not a plain read: a write, or something for the full codec
                    taken = self._fast_write(at, nbytes)
                    if taken is None:
                        return at
                    at, length = taken
                    if not length:  # posted: nothing to send
                        if self.closed:  # by the device call: the rest is dropped
                            return nbytes
                        continue
            data = self._reply_views[length]
            if self._out:
                self._send_now(data)  # queued behind what already waits
            else:
                try:
                    sent = self._send(data, _DONTWAIT)
                except OSError:  # nothing sent: the general path retries, queues or closes
                    sent = -1
                if sent == length:
                    continue
                self._send_rest(data, sent)
            if self.closed:
                return nbytes
        return at

    def _fast_write(self, at: int, nbytes: int) -> tuple[int, int] | None:
        """The message at ``buf[at:nbytes]`` when it is a single-access REGION_WRITE of a
        writable region that the device takes: (where the next message starts, the
        length of the reply in the reply buffer, 0 for a posted write). None leaves it,
        untouched, to the full codec (a read answer_read declined, a refused access)."""
        access = parse_request(self._buf, at, nbytes)
        if access is None:
            return None
        msg_id, command, posted, region, offset, count, value = access
        if command == _REGION_READ or region not in self._writable:
            return None
        end = at + ACCESS_SIZE + count
        try:
            self._write(region, offset, count, value)
        except VfioError:
            return None
        except (HostError, OSError) as err:
            return end, self._backend_failed(command, posted, at, err)
        if posted:
            return end, 0
        return end, pack_write_reply(self._reply, msg_id, region, offset, count)

    def _backend_failed(self, command: int, posted: bool, at: int, err: Exception) -> int:
        """An access of the fast path (the message at ``buf[at:]``) that failed in the
        backend (e.g. the device went away under UIO): logged, and answered EIO (the
        reply is packed in the reply buffer; its length is returned) or, posted,
        counted (0 returned), rather than retried on the full path or taken as the
        client's fault."""
        msg_id, _c, _s, _f, _e, offset, _r, count = ACCESS.unpack_from(self._buf, at)
        self.session.log.warning("%s: %s%s of %d bytes at %#x failed in the backend: %s",
                                 self.endpoint.name, "posted " if posted else "",
                                 Command(command).name, count, offset, err)
        if posted:
            self.session.failed_posted += 1
            return 0
        return pack_error_reply(self._reply, msg_id, command, errno.EIO)

    def _drain_events(self) -> None:
        while not self.closed:
            try:
                event = self.framer.next_event()
            except RemoteProtocolError as err:
                self.endpoint.log.warning(
                    "client of %s: stream unusable (%s); closing", self.endpoint.name, err,
                    extra={"device": self.endpoint.name, "errno": err.errno,
                           "event": "error"})
                self.close()
                return
            if event is NEED_DATA:
                return
            if isinstance(event, ConnectionClosed):
                if event.partial:
                    self.endpoint.log.info("client of %s left in the middle of a message",
                                           self.endpoint.name)
                self.close()
                return
            assert isinstance(event, Message | Rejected)
            reply = self.session.handle(event)
            if reply is not None:
                self._queue(reply)
                if reply.close_after:
                    self._flush()
                    self.close()
                    return

    # ------------------------------------------------------------------ own thread

    def _start_thread(self) -> None:
        """Serve this client from now on with a thread that waits in a blocking receive on
        its socket, instead of through the loop: a request then costs no ``epoll_wait``
        and no dispatch (the loop keeps everything else: other clients, interrupt fds,
        timers, the control socket). Called by the loop, under its lock, once VERSION is
        negotiated; the thread handles each chunk under the loop's lock, so the device and
        the session see one caller at a time, in the socket's order."""
        if self._out or self.closed:
            return  # back-pressured: stays with the loop
        self.server.reactor.remove_reader(self.fd)
        self.sock.setblocking(True)
        self.server.threaded.add(self)
        self._thread = threading.Thread(target=self._serve_on_thread, daemon=True,
                                        name=f"platpass-client-{self.endpoint.name}")
        self._thread.start()

    def _serve_on_thread(self) -> None:
        if self._native is not None:
            self._serve_on_thread_natively(self._native)
            return
        recvmsg_into, bufs, anc_size = self._recvmsg_into, self._bufs, self._anc_size
        lock = self.server.reactor.lock
        run_due_timers = self.server.reactor.run_due_timers
        received = self._received
        while True:
            failed: OSError | None = None
            try:
                nbytes, ancdata, msg_flags, _addr = recvmsg_into(bufs, anc_size)
            except OSError as err:
                failed = err
            with lock:
                if self.closed:  # by the loop meanwhile: what came is dropped, fds too
                    if failed is None:
                        _close_fds(received_fds(ancdata))
                elif failed is None:
                    run_due_timers()  # as the loop would before this request
                    received(nbytes, ancdata, msg_flags)
                else:
                    self._receive_failed(failed)
                if self.closed or self._out:
                    self._leave_thread()
                    return

    def _serve_on_thread_natively(self, native: _NativeServer) -> None:
        """The thread's loop in C: ``serve(True)`` receives with the GIL let go and
        answers each chunk under the loop's lock (after the timers due), returning only
        for what Python must do, with the lock held."""
        lock = self.server.reactor.lock
        while True:
            try:
                result = native.serve(True)
            except Exception:  # raised with the lock let go
                with lock:
                    log.exception("client of %s: unexpected failure; closing it",
                                  self.endpoint.name)
                    self.close()
                    self._leave_thread()
                return
            try:
                self._native_stopped(result)
                if self.closed or self._out:
                    self._leave_thread()
                    return
            finally:
                lock.release()

    def _leave_thread(self) -> None:
        """The thread stops serving (under the loop's lock). Closed: the socket is closed
        here, where the receive was waiting. Back-pressured (a reply waits for the socket):
        the loop takes the client over, as for any client, once the reply has gone."""
        self._thread = None
        self.server.threaded.discard(self)
        if self.closed:
            with contextlib.suppress(OSError):
                self.sock.close()
        else:
            self.sock.setblocking(False)

    @property
    def on_own_thread(self) -> bool:
        """True while a thread of its own serves this client (tests, status)."""
        return self._thread is not None

    # ------------------------------------------------------------------ output

    def _queue(self, reply: Reply) -> None:
        data = reply.header.encode() + reply.payload
        self._out.append((memoryview(data), reply.fds))
        self._flush()

    def _send_now(self, data: memoryview) -> None:
        """Send a reply built in the reply buffer (copied when it must wait)."""
        if self._out:  # keep order behind what is already waiting
            self._out.append((memoryview(bytes(data)), ()))
            return
        try:
            sent = self.sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as err:
            self.endpoint.log.info("client of %s: send failed: %s", self.endpoint.name,
                                   err, extra={"device": self.endpoint.name,
                                               "errno": err.errno, "event": "error"})
            self.close()
            return
        if sent < len(data):
            self._queue_rest(data, sent)

    def _send_rest(self, data: memoryview, sent: int) -> None:
        """A reply built in the reply buffer whose send stopped after ``sent`` bytes
        (negative: nothing went, or the send failed): the rest waits for the socket, or
        :meth:`_send_now` queues it or finds the send's error."""
        if sent >= 0:
            self._queue_rest(data, sent)
        else:
            self._send_now(data)

    def _queue_rest(self, data: memoryview, sent: int) -> None:
        """What a send left of a reply built in the reply buffer waits for the socket,
        copied (the buffer is reused for the next reply)."""
        self._out.append((memoryview(bytes(data[sent:])), ()))
        self._wait_writable()

    def _flush(self) -> None:
        while self._out and not self.closed:
            data, fds = self._out[0]
            try:
                sent = (self.sock.sendmsg([data], rights(fds), _DONTWAIT) if fds
                        else self.sock.send(data, _DONTWAIT))
            except (BlockingIOError, InterruptedError):
                self._wait_writable()
                return
            except OSError as err:
                self.endpoint.log.info("client of %s: send failed: %s", self.endpoint.name,
                                       err, extra={"device": self.endpoint.name,
                                                   "errno": err.errno, "event": "error"})
                self.close()
                return
            if sent < len(data):
                # The fds went with the bytes already sent; the rest goes without them.
                self._out[0] = (data[sent:], ())
                self._wait_writable()
                return
            self._out.popleft()
        if not self._out and not self.closed:
            self.server.unwatch_writable(self)

    def _wait_writable(self) -> None:
        self.server.watch_writable(self)

    def on_writable(self) -> None:
        self._flush()

    # ------------------------------------------------------------------ teardown

    def settle(self) -> None:
        """If the peer has shut down its end, process what it sent and its EOF now.

        Called before a new connection to the same device is judged: a client that closed
        must not count as connected. A peer still able to send is left alone (its input is
        read by the loop as usual), so this never blocks and reads a bounded amount.
        """
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLRDHUP)
        thread = self._thread
        if thread is not None:
            # Its thread reads the socket: only it may take what is left, in order. A
            # peer that has shut down gets a moment (the loop's lock let go) for it.
            events = poller.poll(0)
            if events and events[0][1] & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                with self.server.reactor.released():
                    thread.join(_SETTLE_WAIT)
            return
        for _ in range(_SETTLE_READS):
            if self.closed:
                return
            events = poller.poll(0)
            if not events:
                return
            _fd, mask = events[0]
            if not mask & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                return  # still sending: a live client
            if self._out:
                # Back-pressured (no input read while output waits), and the peer is gone:
                # what it sent last can get no reply; close.
                self.close()
                return
            self.on_readable()
        if not self.closed:
            self.close()  # a peer that shut down and still had this much unread input

    def _negotiation_expired(self) -> None:
        if not self.closed and not self.session.negotiated:
            self.endpoint.log.warning("client of %s sent no VERSION within %.0f s; closing",
                                      self.endpoint.name, self.server.negotiation_timeout)
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        native, self._native = self._native, None
        if native is not None:
            # It knows the fd by number only: from now on it never touches it (a device
            # call that closed us returns to a loop that must not send or receive on a
            # number that may name another file), and a chunk the reactor's fast poll
            # received for us but no callback took is dropped here, with its fds.
            kept = native.detach()
            if type(kept) is tuple and kept[0] in (SLOW, CLOSED) and kept[3]:
                _close_fds(received_fds(kept[3]))
        self._version_timer.cancel()
        self.server.forget_client(self)
        self._out.clear()
        self.framer.discard()  # fds of a half-received message are closed, not leaked
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            # Its thread waits in a receive on the socket: wake it with end-of-file; it
            # closes the socket (closing it here could hand the fd number to another
            # file under that receive).
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        else:
            with contextlib.suppress(OSError):
                self.sock.close()
        try:
            self.endpoint.device.client_gone()
        except (PlatpassError, OSError) as err:
            # A failing backend (device removed) must not keep the device's client slot
            # taken, nor escape into the shared loop.
            log.warning("%s: client_gone failed: %s", self.endpoint.name, err)
        finally:
            self.endpoint._failed_posted_before += self.session.failed_posted
            self.endpoint.client = None
        self.session.log.flush()  # how many of its lines were suppressed, if any
        self.endpoint.log.info("client of %s disconnected", self.endpoint.name,
                               extra={"device": self.endpoint.name,
                                      "event": "disconnected"})


class DeviceEndpoint:
    """A device served on one listening socket."""

    def __init__(self, server: VfioUserServer, name: str, device: VfioDevice,
                 sock: socket.socket, path: Path | None, options: SocketOptions,
                 limits: Limits, socket_file: SocketFile | None = None) -> None:
        self.server = server
        self.name = name
        self.device = device
        self.sock = sock
        #: Where clients connect; None when the socket file is not ours to remove.
        self.path = path
        self.socket_file = socket_file
        self.options = options
        self.limits = limits
        self.client: ClientConnection | None = None
        self.refused = 0
        #: Lines about connections to this device, rate-limited (a peer can connect and
        #: be refused, or break its stream, as often as it likes).
        self.log = LogLimiter(log, source=name)
        self.backoff = ListenerBackoff(server.reactor, sock.fileno(), self.on_acceptable,
                                       name)
        #: Posted writes of earlier clients that failed (see :attr:`failed_posted_writes`).
        self._failed_posted_before = 0

    @property
    def failed_posted_writes(self) -> int:
        """No-reply commands (posted writes) that failed, over every client so far."""
        client = self.client
        current = client.session.failed_posted if client is not None else 0
        return self._failed_posted_before + current

    def on_acceptable(self) -> None:
        try:
            self._accept()
        except Exception:  # one failed accept must not stop the shared loop
            log.exception("%s: accepting a client failed", self.name)

    def _accept(self) -> None:
        try:
            conn, _addr = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            # Out of fds (a hostile client, or many devices): pause accepting rather than
            # spin on a listening socket that stays readable; clients already connected
            # keep being served.
            self.backoff.failed(err)
            return
        self.backoff.succeeded()
        pid, uid, gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
        if not self.options.allows(uid, gid):
            self.log.warning("%s: refusing peer pid %d uid %d gid %d (not allowed)",
                             self.name, pid, uid, gid,
                             extra={"device": self.name, "pid": pid, "uid": uid,
                                    "gid": gid, "event": "refused"})
            self.refused += 1
            conn.close()
            return
        if self.client is not None:
            # The previous client may have closed a moment ago with its EOF (and maybe its
            # last messages) still unread: epoll may report the listening socket first.
            # A closed peer frees the device before this client is judged.
            self.client.settle()
        if self.client is not None:
            self.log.warning("%s: refusing a second client (pid %d); one is connected",
                             self.name, pid,
                             extra={"device": self.name, "pid": pid, "uid": uid,
                                    "gid": gid, "event": "refused"})
            self.refused += 1
            conn.close()
            return
        try:
            self.adopt(conn)
        except BaseException:
            conn.close()
            raise
        self.log.info("%s: client pid %d uid %d connected", self.name, pid, uid,
                      extra={"device": self.name, "pid": pid, "uid": uid, "gid": gid,
                             "event": "connected"})

    def adopt(self, conn: socket.socket) -> ClientConnection:
        """Serve an already-connected socket as this device's client (the accept path;
        tests hand in one end of a socketpair)."""
        if self.client is not None:
            raise HostError(f"{self.name}: a client is already connected")
        conn.setblocking(False)
        client = ClientConnection(self.server, self, conn)
        self.client = client
        self.server.add_client(client)
        return client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.backoff.close()
        self.log.flush()
        self.server.reactor.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.socket_file is None:
            return
        if self.path is not None:
            try:
                self.socket_file.unlink()
            except OSError as err:
                # A server that dropped its privileges may not write the socket's
                # directory; the next server replaces the stale socket.
                log.warning("%s: cannot remove %s: %s", self.name, self.path, err)
        self.socket_file.close()


class VfioUserServer:
    """Serves any number of devices from one reactor."""

    def __init__(self, reactor: EpollReactor, limits: Limits | None = None, *,
                 negotiation_timeout: float = 10.0, client_threads: int = 0,
                 native: bool = True) -> None:
        self.reactor = reactor
        self.limits = limits or Limits()
        #: Answer single accesses in C (:mod:`platpass.vfio_user.native`) when it is
        #: available; False keeps every client on the Python path (tests, benchmarks).
        self.native = native and NATIVE is not None
        if self.native:
            assert NATIVE is not None
            reactor.use_fast_poll(NATIVE.poll)
        #: At most this many clients at a time (those that negotiate while fewer are) are
        #: served on a thread of their own that waits in a blocking receive: their
        #: requests skip the loop's ``epoll_wait`` and dispatch. The rest, and everything
        #: else, stay with the loop.
        self.client_threads = client_threads
        #: The clients served on their own threads now.
        self.threaded: set[ClientConnection] = set()
        if client_threads > 0:
            reactor.allow_helpers()
        #: Seconds a new client has to complete VERSION before it is disconnected.
        self.negotiation_timeout = negotiation_timeout
        self.endpoints: list[DeviceEndpoint] = []
        self._clients: dict[int, ClientConnection] = {}
        # Write-readiness is watched on a private epoll whose fd the reactor reads: the
        # shared reactor only knows readers.
        self._wpoll = select.epoll()
        self._wwatched: set[int] = set()
        reactor.add_reader(self._wpoll.fileno(), self._on_wpoll)

    def serve(self, name: str, device: VfioDevice, path: str | Path,
              options: SocketOptions | None = None) -> DeviceEndpoint:
        """Listen for clients of ``device`` at ``path`` (HostError if it cannot)."""
        options = options or SocketOptions()
        path = Path(path)
        sock, socket_file = bind_unix_socket(path, mode=options.mode, owner=options.owner,
                                             group=options.group,
                                             server_uid=options.server_uid)
        try:
            return self._add_endpoint(name, device, sock, path, options, socket_file)
        except BaseException:
            sock.close()
            socket_file.unlink()
            socket_file.close()
            raise

    def serve_fd(self, name: str, device: VfioDevice, fd: int,
                 options: SocketOptions | None = None, *,
                 quiesce: bool = True) -> DeviceEndpoint:
        """Serve on an inherited listening socket (``--fd``, vfio-user's convention).
        ``quiesce=False`` serves the device as it is (a ``serve --workers`` worker that took
        over a device in the state its predecessor's clients left it)."""
        try:
            sock = socket.socket(fileno=fd)
        except (OSError, ValueError, OverflowError) as err:  # ValueError: negative fd
            raise HostError(f"fd {fd} is not a socket: {err}") from err
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise HostError(f"fd {fd} is not an AF_UNIX stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            try:
                sock.listen(4)  # bound but not yet listening: fine
            except OSError as err:
                sock.detach()
                raise HostError(f"fd {fd} is not a listening socket: {err}") from err
        sock.setblocking(False)
        return self._add_endpoint(name, device, sock, None, options or SocketOptions(),
                                  quiesce=quiesce)

    def _add_endpoint(self, name: str, device: VfioDevice, sock: socket.socket,
                      path: Path | None, options: SocketOptions,
                      socket_file: SocketFile | None = None, *,
                      quiesce: bool = True) -> DeviceEndpoint:
        if quiesce:
            device.open()  # quiesce once when serving starts; reconnects keep the state
        endpoint = DeviceEndpoint(self, name, device, sock, path, options, self.limits,
                                  socket_file)
        self.endpoints.append(endpoint)
        self.reactor.add_reader(sock.fileno(), endpoint.on_acceptable)
        return endpoint

    # -- client bookkeeping (called by connections) --------------------------------

    def add_client(self, client: ClientConnection) -> None:
        self._clients[client.fd] = client
        self.reactor.add_reader(client.fd, client.on_readable)

    def forget_client(self, client: ClientConnection) -> None:
        self._clients.pop(client.fd, None)
        self.reactor.remove_reader(client.fd)
        self.unwatch_writable(client)

    def watch_writable(self, client: ClientConnection) -> None:
        if client.fd in self._wwatched:
            return
        self._wwatched.add(client.fd)
        self._wpoll.register(client.fd, select.EPOLLOUT)
        self.reactor.remove_reader(client.fd)  # back-pressure: no input while output waits

    def unwatch_writable(self, client: ClientConnection) -> None:
        if client.fd not in self._wwatched:
            return
        self._wwatched.discard(client.fd)
        with contextlib.suppress(OSError, ValueError):
            self._wpoll.unregister(client.fd)
        if not client.closed and not client.on_own_thread:  # its thread reads it
            self.reactor.add_reader(client.fd, client.on_readable, client._native)

    def _on_wpoll(self) -> None:
        for fd, _mask in self._wpoll.poll(0):
            client = self._clients.get(fd)
            if client is not None:
                client.on_writable()

    @property
    def clients(self) -> tuple[ClientConnection, ...]:
        return tuple(self._clients.values())

    def close(self) -> None:
        """Disconnect every client, close and unlink every socket."""
        with self.reactor.lock:  # a client's own thread may be handling a request
            for endpoint in self.endpoints:
                endpoint.close()
            self.endpoints.clear()
            self.reactor.remove_reader(self._wpoll.fileno())
            self._wpoll.close()


__all__ = ["ClientConnection", "DeviceEndpoint", "SocketOptions", "VfioUserServer"]
