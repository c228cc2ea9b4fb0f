"""A blocking vfio-user client on the same codec: for the KVM client, tests and benchmarks.

One request at a time: send, then wait for the reply with the same message id. A refused
command raises :class:`~platpass.errors.VfioError` carrying the server's errno; a server
that breaks the protocol raises :class:`~platpass.errors.RemoteProtocolError`; **any**
socket failure (cannot connect, reset, broken pipe, the server hung up, a timeout) raises
:class:`~platpass.errors.ConnectionLost`, from every method, and leaves the client closed.
No ``OSError`` escapes.

The trapped register path (:meth:`VfioUserClient.read` / :meth:`~VfioUserClient.write` /
:meth:`~VfioUserClient.post_write`) uses the codec's fast path
(:mod:`platpass.vfio_user.protocol.region_access`): one ``send`` and (normally) one
``recv_into`` over preallocated buffers; anything unexpected falls back to the full codec.
**Posted writes** (:meth:`~VfioUserClient.post_write`, or ``write(..., posted=True)``)
carry the no-reply flag and return once sent, as a posted bus write does: the server
processes messages in order, so any later request sees the write's effect; a posted
write the server refuses is counted and logged there, never reported here.

The socket is blocking with kernel send/receive timeouts (``SO_SNDTIMEO``/``SO_RCVTIMEO``),
not Python's socket timeout, which would poll before every call.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any, NoReturn

from platpass.errors import ConnectionLost, LocalProtocolError, RemoteProtocolError, VfioError
from platpass.vfio_device.uapi import ACCESS_SIZES, DmaMapFlags, IrqSetFlags, RegionFlags
from platpass.vfio_user.native import NATIVE
from platpass.vfio_user.protocol import messages as m
from platpass.vfio_user.protocol.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Message,
    Rejected,
)
from platpass.vfio_user.protocol.header import (
    HEADER,
    HEADER_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    Command,
    Header,
    HeaderFlags,
    MessageType,
    reply_header,
)
from platpass.vfio_user.protocol.region_access import (
    ACCESS_SIZE,
    BUFFER_SIZE,
    is_write_reply,
    pack_read,
    pack_write,
    read_reply_value,
)
from platpass.vfio_user.scm_rights import ancillary_space, received_fds, rights

_PAGE = mmap.PAGESIZE
_MAX_ONE = BUFFER_SIZE - ACCESS_SIZE  # the longest write the send buffer holds
_ONE_ACCESS = frozenset(ACCESS_SIZES)  # what the C round trip takes (aligned)
_TIMEVAL = struct.Struct("@ll")  # struct timeval (SO_RCVTIMEO / SO_SNDTIMEO)


def _set_timeout(sock: socket.socket, timeout: float | None) -> None:
    """Kernel send/receive timeouts on a blocking socket (None or 0: wait forever)."""
    seconds = 0.0 if timeout is None else max(timeout, 0.0)
    whole = int(seconds)
    value = _TIMEVAL.pack(whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


@dataclass(frozen=True, slots=True)
class RegionDescription:
    """A region as the server described it; ``fd`` is ours to close (None if no MMAP)."""

    info: m.RegionInfo
    fd: int | None

    @property
    def mappable(self) -> bool:
        return self.fd is not None and bool(self.info.flags & RegionFlags.MMAP)

    def areas(self) -> tuple[m.SparseMmapArea, ...]:
        """What may be mapped: the sparse areas, or the whole region without them."""
        if not self.mappable:
            return ()
        if self.info.sparse_areas is not None:
            return tuple(a for a in self.info.sparse_areas if a.size)
        return (m.SparseMmapArea(0, self.info.size),)


@dataclass(slots=True)
class MappedArea:
    """One mapped area: ``[offset, offset+size)`` of the region, backed by ``map``."""

    offset: int
    size: int
    map: mmap.mmap
    u32: memoryview = field(init=False)

    def __post_init__(self) -> None:
        self.u32 = memoryview(self.map).cast("I")

    def contains(self, offset: int, size: int) -> bool:
        return self.offset <= offset and offset + size <= self.offset + self.size


@dataclass(slots=True)
class MappedRegion:
    """The mapped parts of a region; register access through memory, no message."""

    index: int
    areas: list[MappedArea]

    def area_for(self, offset: int, size: int) -> MappedArea:
        for area in self.areas:
            if area.contains(offset, size):
                return area
        raise VfioError(errno.EINVAL, f"[{offset:#x}, +{size}) of region {self.index} "
                        "is not mapped (trapped: use the client's read/write)")

    def read(self, offset: int, size: int) -> int:
        """Read 1, 2, 4 or 8 bytes (little-endian) at ``offset`` of the region."""
        area = self.area_for(offset, size)
        at = offset - area.offset
        return int.from_bytes(area.map[at:at + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """Write 1, 2, 4 or 8 bytes (little-endian) at ``offset`` of the region."""
        area = self.area_for(offset, size)
        at = offset - area.offset
        area.map[at:at + size] = value.to_bytes(size, "little")

    def read32(self, offset: int) -> int:
        area = self.area_for(offset, 4)
        return area.u32[(offset - area.offset) >> 2]

    def write32(self, offset: int, value: int) -> None:
        area = self.area_for(offset, 4)
        area.u32[(offset - area.offset) >> 2] = value

    def close(self) -> None:
        for area in self.areas:
            area.u32.release()
            area.map.close()
        self.areas.clear()


class VfioUserClient:
    """A connected, negotiated client of one vfio-user device.

    ``sock`` should be blocking (``connect`` makes it so, with ``timeout`` as kernel
    send/receive timeouts).
    """

    def __init__(self, sock: socket.socket, *, max_msg_fds: int = 8,
                 max_data_xfer_size: int = 1 << 20, write_multiple: bool = False) -> None:
        self.sock = sock
        self.write_multiple = write_multiple
        self.max_msg_fds = max_msg_fds
        self.max_data_xfer_size = max_data_xfer_size
        self._framer = Connection(max_message_size=HEADER_SIZE + 64 + max_data_xfer_size,
                                  max_fds=max_msg_fds)
        self._anc_size = ancillary_space(max_msg_fds)
        self._next_id = 0
        self._send_buf = bytearray(BUFFER_SIZE)
        send_view = memoryview(self._send_buf)
        #: message length -> the bytes of the fast path's request of that length.
        self._send_views = {n: send_view[:n] for n in range(ACCESS_SIZE, BUFFER_SIZE + 1)}
        self._recv_buf = bytearray(1 << 16)
        self._recv_view = memoryview(self._recv_buf)
        #: The trapped-access fast path's per-call look-ups, bound once.
        self._read_request = self._send_views[ACCESS_SIZE]
        self._sendall = sock.sendall
        self._recv_into = sock.recv_into
        #: The C round trip of one access (:mod:`platpass.vfio_user.native`), or None.
        self._roundtrip = NATIVE.roundtrip if NATIVE is not None else None
        self._fd = sock.fileno()
        #: The framer holds nothing (its ``idle``), kept here so the fast path does not
        #: ask it on every access: cleared whenever bytes go to the framer, set again once
        #: a message has been taken out of it and it is idle.
        self._fast_ok = True
        self.server_version: m.Version | None = None
        self.server_caps: dict[str, Any] = {}
        self.closed = False
        #: Why the connection ended, once it has (every later call raises it again).
        self.lost: ConnectionLost | None = None

    @classmethod
    def connect(cls, path: str | os.PathLike[str], *, timeout: float | None = 10.0,
                negotiate: bool = True, **kwargs: Any) -> VfioUserClient:
        """Connect to ``path`` and (by default) negotiate the version.

        ``timeout`` bounds each send and each wait for a reply (None: no bound).
        Raises ConnectionLost if the socket cannot be reached or the server hangs up
        (e.g. a second client is refused), VfioError if VERSION is refused.
        """
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError as err:
            raise ConnectionLost(err.errno or errno.EIO, f"no socket: {err}") from err
        try:
            try:
                _set_timeout(sock, timeout)
                sock.connect(os.fspath(path))
            except OSError as err:
                raise ConnectionLost(err.errno or errno.EIO,
                                     f"cannot connect to {os.fspath(path)}: {err}") from err
            client = cls(sock, **kwargs)
            if negotiate:
                client.negotiate()
        except BaseException:
            sock.close()
            raise
        return client

    # ------------------------------------------------------------------ plumbing

    def _lose(self, err: OSError | None, what: str) -> NoReturn:
        """The connection is gone: close it and raise ConnectionLost (from ``err``)."""
        if err is None:
            code, why = errno.ECONNRESET, "server closed the connection"
        elif isinstance(err, BlockingIOError):  # SO_RCVTIMEO/SO_SNDTIMEO expired
            code, why = errno.ETIMEDOUT, "no answer in time"
        else:
            code, why = err.errno or errno.EIO, str(err)
        lost = ConnectionLost(code, f"{what}: connection lost: {why}")
        self.lost = lost
        self.close()
        if err is None:
            raise lost
        raise lost from err

    def _check_open(self) -> None:
        if self.lost is not None:
            raise ConnectionLost(self.lost.errno, f"connection already lost ({self.lost})")
        if self.closed:
            raise LocalProtocolError("client is closed")

    def _msg_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFF
        return self._next_id

    def send_raw(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        """Write bytes (with fds on the first byte) to the socket as they are.

        Raises ConnectionLost."""
        try:
            if fds:
                sent = self.sock.sendmsg([data], rights(fds))
                data = data[sent:]
            if data:
                self.sock.sendall(data)
        except OSError as err:
            self._lose(err, "send")

    def _receive(self) -> Message:
        """The next complete message from the server (blocking).

        Raises ConnectionLost, or RemoteProtocolError for what the framer refuses."""
        while True:
            event = self._framer.next_event()
            if isinstance(event, Message):
                self._fast_ok = self._framer.idle
                return event
            if isinstance(event, Rejected):
                for fd in event.fds:
                    os.close(fd)
                raise RemoteProtocolError(event.errno, event.reason)
            if isinstance(event, ConnectionClosed):
                self._lose(None, "receive")
            assert event is NEED_DATA
            try:
                nbytes, ancdata, flags, _ = self.sock.recvmsg_into([self._recv_buf],
                                                                   self._anc_size)
            except OSError as err:
                self._lose(err, "receive")
            self._fast_ok = False
            self._framer.receive_data(self._recv_view[:nbytes], received_fds(ancdata),
                                      fds_truncated=bool(flags & socket.MSG_CTRUNC))

    def request(self, command: Command, payload: bytes = b"",
                fds: tuple[int, ...] | list[int] = (), *, no_reply: bool = False
                ) -> Message | None:
        """Send one command and return its (successful) reply message.

        Raises VfioError(errno) for an error reply, ConnectionLost when the socket fails,
        RemoteProtocolError when the server breaks the protocol. Server-to-client commands
        arriving meanwhile are refused with ENOTSUP (this client exports no DMA memory).
        """
        self._check_open()
        msg_id = self._msg_id()
        flags = MessageType.COMMAND | (HeaderFlags.NO_REPLY if no_reply else 0)
        header = Header(msg_id, command, HEADER_SIZE + len(payload), flags)
        self.send_raw(header.encode() + payload, fds)
        if no_reply:
            return None
        return self._wait_reply(msg_id, command)

    def _wait_reply(self, msg_id: int, command: Command) -> Message:
        while True:
            reply = self._receive()
            if reply.header.is_command:
                self._refuse_server_command(reply)
                continue
            if reply.header.msg_id != msg_id or reply.header.command != command:
                for fd in reply.fds:
                    os.close(fd)
                raise RemoteProtocolError(
                    errno.EPROTO, f"reply {reply.header} does not answer id {msg_id}")
            if reply.header.is_error:
                for fd in reply.fds:
                    os.close(fd)
                err = reply.header.error or errno.EIO
                raise VfioError(err, f"{command.name} refused by the server")
            return reply

    def _refuse_server_command(self, message: Message) -> None:
        for fd in message.fds:
            os.close(fd)
        if not message.header.no_reply:
            self.send_raw(reply_header(message.header, 0, errno.ENOTSUP).encode())

    # ------------------------------------------------------------------ commands

    def negotiate(self) -> m.Version:
        """VERSION: propose 0.1 with our receive limits; returns the server's reply."""
        caps: dict[str, Any] = {"max_msg_fds": self.max_msg_fds,
                                "max_data_xfer_size": self.max_data_xfer_size}
        if self.write_multiple:
            caps["write_multiple"] = True
        reply = self.request(Command.VERSION,
                             m.Version(VERSION_MAJOR, VERSION_MINOR, caps).encode())
        assert reply is not None
        version = m.Version.decode(reply.payload)
        if version.major != VERSION_MAJOR or version.minor > VERSION_MINOR:
            raise RemoteProtocolError(errno.EPROTO, f"server answered version "
                                      f"{version.major}.{version.minor}")
        self.server_version = version
        self.server_caps = version.capabilities
        return version

    def device_info(self) -> m.DeviceInfo:
        reply = self.request(Command.DEVICE_GET_INFO, m.DeviceInfo(16).encode())
        assert reply is not None
        return m.DeviceInfo.decode(reply.payload)

    def region_info(self, index: int) -> RegionDescription:
        """Region info with its capability chain (retrying with the argsz the server
        asks for) and the mmap fd when the region is MMAP."""
        argsz = m.REGION_INFO.size
        for _attempt in range(2):
            reply = self.request(Command.DEVICE_GET_REGION_INFO,
                                 m.RegionInfoRequest(argsz, index).encode())
            assert reply is not None
            info = m.RegionInfo.decode(reply.payload)
            fd = reply.fds[0] if reply.fds else None
            for extra in reply.fds[1:]:
                os.close(extra)
            if info.argsz <= argsz:
                return RegionDescription(info, fd)
            if fd is not None:
                os.close(fd)
            argsz = info.argsz
        raise RemoteProtocolError(errno.EPROTO, "region info argsz keeps growing")

    def irq_info(self, index: int) -> m.IrqInfo:
        reply = self.request(Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(16, 0, index, 0).encode())
        assert reply is not None
        return m.IrqInfo.decode(reply.payload)

    def map_region(self, index: int) -> MappedRegion:
        """mmap every mappable area of region ``index`` (fd + region offset + area
        offset). An unmappable region gives a MappedRegion with no areas."""
        region = self.region_info(index)
        areas: list[MappedArea] = []
        try:
            for area in region.areas():
                assert region.fd is not None
                length = (area.size + _PAGE - 1) // _PAGE * _PAGE
                mapping = mmap.mmap(region.fd, length, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE,
                                    offset=region.info.offset + area.offset)
                areas.append(MappedArea(area.offset, area.size, mapping))
        finally:
            if region.fd is not None:
                os.close(region.fd)
        return MappedRegion(index, areas)

    def read_bytes(self, region: int, offset: int, count: int) -> bytes:
        reply = self.request(Command.REGION_READ, m.RegionRead(offset, region, count).encode())
        assert reply is not None
        return m.RegionReadReply.decode(reply.payload).data

    def write_bytes(self, region: int, offset: int, data: bytes, *,
                    no_reply: bool = False) -> None:
        self.request(Command.REGION_WRITE,
                     m.RegionWrite(offset, region, len(data), data).encode(),
                     no_reply=no_reply)

    def read(self, region: int, offset: int, size: int) -> int:
        """Trapped register read (fast path: one send, one recv_into).

        Raises VfioError (refused), ConnectionLost."""
        if not self._fast_ok:
            return int.from_bytes(self.read_bytes(region, offset, size), "little")
        self._next_id = msg_id = (self._next_id + 1) & 0xFFFF
        roundtrip = self._roundtrip
        if roundtrip is not None and size in _ONE_ACCESS and not offset % size:
            try:
                got = roundtrip(self._fd, msg_id, region, offset, size)
            except OSError as err:
                self._lose(err, "REGION_READ")
            if type(got) is int:
                return got
            return int.from_bytes(self._finish_slow(msg_id, Command.REGION_READ, got)
                                  .payload[16:], "little")
        pack_read(self._send_buf, msg_id, region, offset, size)
        try:
            self._sendall(self._read_request)
            nbytes = self._recv_into(self._recv_buf)
        except OSError as err:
            self._lose(err, "REGION_READ")
        value = read_reply_value(self._recv_buf, nbytes, msg_id, size)
        if value is not None:
            return value
        return int.from_bytes(self._finish_slow(msg_id, Command.REGION_READ,
                                                self._recv_view[:nbytes]).payload[16:],
                              "little")

    def write(self, region: int, offset: int, size: int, value: int, *,
              posted: bool = False) -> None:
        """Trapped register write (fast path as :meth:`read`); ``posted``: do not wait
        for the reply (see :meth:`post_write`).

        Raises VfioError (refused; never for a posted write), ConnectionLost."""
        if size > _MAX_ONE or not self._fast_ok:
            self.write_bytes(region, offset, value.to_bytes(size, "little"), no_reply=posted)
            return
        self._next_id = msg_id = (self._next_id + 1) & 0xFFFF
        roundtrip = self._roundtrip
        if roundtrip is not None and size in _ONE_ACCESS and not offset % size:
            try:
                got = roundtrip(self._fd, msg_id, region, offset, size, value, posted)
            except OSError as err:
                self._lose(err, "REGION_WRITE")
            if got is not None and type(got) is not int:
                self._finish_slow(msg_id, Command.REGION_WRITE, got)
            return
        length = pack_write(self._send_buf, msg_id, region, offset, size, value,
                            posted=posted)
        try:
            self._sendall(self._send_views[length])
            if posted:
                return
            nbytes = self._recv_into(self._recv_buf)
        except OSError as err:
            self._lose(err, "REGION_WRITE")
        if not is_write_reply(self._recv_buf, nbytes, msg_id):
            self._finish_slow(msg_id, Command.REGION_WRITE, self._recv_view[:nbytes])

    def post_write(self, region: int, offset: int, size: int, value: int) -> None:
        """Posted register write: REGION_WRITE with the no-reply flag, returning once sent.

        Later requests on this client see its effect (the server keeps order). If the
        server refuses it, it counts and logs that; this client never hears of it.
        Raises ConnectionLost."""
        self.write(region, offset, size, value, posted=True)

    def _finish_slow(self, msg_id: int, command: Command, data: bytes | memoryview
                     ) -> Message:
        """The fast path got something else (``data``, what it read): hand the bytes to
        the framer and wait."""
        if not data:
            self._lose(None, command.name)
        self._fast_ok = False
        self._framer.receive_data(bytes(data))
        while True:
            reply = self._receive()
            if reply.header.is_command:
                self._refuse_server_command(reply)
                continue
            if reply.header.msg_id != msg_id:
                raise RemoteProtocolError(errno.EPROTO, f"unexpected reply {reply.header}")
            if reply.header.is_error:
                raise VfioError(reply.header.error or errno.EIO,
                                f"{command.name} refused by the server")
            return reply

    def write_multi(self, writes: list[tuple[int, int, int, int]], *,
                    no_reply: bool = False) -> int | None:
        """REGION_WRITE_MULTI of ``(region, offset, size, value)`` writes (needs
        ``write_multiple`` in the server's VERSION reply); returns how many completed."""
        batch = m.RegionWriteMulti(tuple(
            m.SingleWrite(offset, region, size, value.to_bytes(size, "little"))
            for region, offset, size, value in writes))
        reply = self.request(Command.REGION_WRITE_MULTI, batch.encode(), no_reply=no_reply)
        return None if reply is None else m.RegionWriteMultiReply.decode(reply.payload).wr_cnt

    def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 1, *,
                 bools: tuple[bool, ...] = (), fds: tuple[int, ...] = ()) -> None:
        """DEVICE_SET_IRQS as VFIO defines it (fds go as SCM_RIGHTS)."""
        data = bytes(int(b) for b in bools)
        payload = m.SetIrqs(m.IRQ_SET.size + len(data), IrqSetFlags(flags), index, start,
                            count, data).encode()
        self.request(Command.DEVICE_SET_IRQS, payload, fds)

    def set_trigger_eventfd(self, index: int, fd: int) -> None:
        """Signal ``fd`` when interrupt ``index`` fires (-1 tears it down)."""
        flags = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER
        self.set_irqs(index, flags, 0, 1, fds=() if fd < 0 else (fd,))

    def set_unmask_eventfd(self, index: int, fd: int) -> None:
        """Unmask ``index`` whenever ``fd`` is signalled (a KVM irqfd resampler)."""
        flags = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK
        self.set_irqs(index, flags, 0, 1, fds=() if fd < 0 else (fd,))

    def mask(self, index: int) -> None:
        self.set_irqs(index, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK)

    def unmask(self, index: int) -> None:
        self.set_irqs(index, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK)

    def trigger(self, index: int) -> None:
        """Loopback trigger (DATA_NONE | ACTION_TRIGGER)."""
        self.set_irqs(index, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER)

    def disable_irqs(self, index: int) -> None:
        """count 0 + DATA_NONE + TRIGGER: tear down every interrupt of ``index``."""
        self.set_irqs(index, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, 0, 0)

    def reset(self) -> None:
        self.request(Command.DEVICE_RESET)

    def dma_map(self, address: int, size: int,
                flags: int = DmaMapFlags.READ | DmaMapFlags.WRITE, *,
                fd: int | None = None, offset: int = 0) -> None:
        payload = m.DmaMap(m.DMA_MAP.size, DmaMapFlags(flags), offset, address, size).encode()
        self.request(Command.DMA_MAP, payload, () if fd is None else (fd,))

    def dma_unmap(self, address: int, size: int, *, unmap_all: bool = False) -> m.DmaUnmap:
        flags = m.DMA_UNMAP_FLAG_ALL if unmap_all else 0
        reply = self.request(Command.DMA_UNMAP,
                             m.DmaUnmap(m.DMA_UNMAP.size, flags, address, size).encode())
        assert reply is not None
        return m.DmaUnmap.decode(reply.payload)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()

    def __enter__(self) -> VfioUserClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["HEADER", "MappedArea", "MappedRegion", "RegionDescription", "VfioUserClient"]
