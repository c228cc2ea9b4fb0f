"""A blocking vfio-user client on the same codec: for the KVM client, tests and benchmarks.

One request at a time: send, then wait for the reply with the same message id. A refused
command raises :class:`~platpass.errors.VfioError` carrying the server's errno; a server
that hangs up or breaks the protocol raises :class:`~platpass.errors.RemoteProtocolError`.

The trapped register path (:meth:`VfioUserClient.read` / :meth:`~VfioUserClient.write`)
is a fast path: precompiled structs, one ``send`` and (normally) one ``recv_into`` into a
preallocated buffer; anything unexpected falls back to the full codec.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from platpass.errors import LocalProtocolError, RemoteProtocolError, VfioError
from platpass.vfio_device.uapi import DmaMapFlags, IrqSetFlags, RegionFlags
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

_ACCESS = struct.Struct("=HHIIIQII")  # header + offset, region, count
_ACCESS_SIZE = _ACCESS.size  # 32
_PAGE = mmap.PAGESIZE
_REGION_READ = int(Command.REGION_READ)
_REGION_WRITE = int(Command.REGION_WRITE)
_REPLY = int(MessageType.REPLY)


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
    """A connected, negotiated client of one vfio-user device."""

    def __init__(self, sock: socket.socket, *, max_msg_fds: int = 8,
                 max_data_xfer_size: int = 1 << 20, write_multiple: bool = False) -> None:
        self.sock = sock
        self.write_multiple = write_multiple
        self.max_msg_fds = max_msg_fds
        self.max_data_xfer_size = max_data_xfer_size
        self._framer = Connection(max_message_size=HEADER_SIZE + 64 + max_data_xfer_size,
                                  max_fds=max_msg_fds)
        self._next_id = 0
        self._send_buf = bytearray(_ACCESS_SIZE + 8)
        send_view = memoryview(self._send_buf)
        self._request_view = send_view[:_ACCESS_SIZE]
        self._write_views = {n: send_view[:_ACCESS_SIZE + n] for n in (1, 2, 4, 8)}
        self._recv_buf = bytearray(1 << 16)
        self._recv_view = memoryview(self._recv_buf)
        self.server_version: m.Version | None = None
        self.server_caps: dict[str, Any] = {}
        self.closed = False

    @classmethod
    def connect(cls, path: str | os.PathLike[str], *, timeout: float | None = 10.0,
                negotiate: bool = True, **kwargs: Any) -> VfioUserClient:
        """Connect to ``path`` and (by default) negotiate the version.

        Raises OSError if the socket cannot be reached, RemoteProtocolError if the server
        hangs up (e.g. a second client is refused), VfioError if VERSION is refused.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            client = cls(sock, **kwargs)
            if negotiate:
                client.negotiate()
        except BaseException:
            sock.close()
            raise
        return client

    # ------------------------------------------------------------------ plumbing

    def _msg_id(self) -> int:
        self._next_id = (self._next_id + 1) & 0xFFFF
        return self._next_id

    def send_raw(self, data: bytes, fds: tuple[int, ...] | list[int] = ()) -> None:
        """Write bytes (with fds on the first byte) to the socket as they are."""
        if fds:
            sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               struct.pack(f"={len(fds)}i", *fds))])
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def _receive(self) -> Message:
        """The next complete message from the server (blocking)."""
        while True:
            event = self._framer.next_event()
            if isinstance(event, Message):
                return event
            if isinstance(event, Rejected):
                for fd in event.fds:
                    os.close(fd)
                raise RemoteProtocolError(event.errno, event.reason)
            if isinstance(event, ConnectionClosed):
                self.closed = True
                raise RemoteProtocolError(errno.ECONNRESET, "server closed the connection")
            assert event is NEED_DATA
            anc = socket.CMSG_SPACE(self.max_msg_fds * 4)
            nbytes, ancdata, flags, _ = self.sock.recvmsg_into([self._recv_buf], anc)
            fds: list[int] = []
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(data) - len(data) % 4
                    fds.extend(struct.unpack(f"={usable // 4}i", data[:usable]))
            self._framer.receive_data(self._recv_view[:nbytes], fds,
                                      fds_truncated=bool(flags & socket.MSG_CTRUNC))

    def request(self, command: Command, payload: bytes = b"",
                fds: tuple[int, ...] | list[int] = (), *, no_reply: bool = False
                ) -> Message | None:
        """Send one command and return its (successful) reply message.

        Raises VfioError(errno) for an error reply. Server-to-client commands arriving
        meanwhile are refused with ENOTSUP (this client exports no DMA memory).
        """
        if self.closed:
            raise LocalProtocolError("client is closed")
        msg_id = self._msg_id()
        flags = MessageType.COMMAND | (HeaderFlags.NO_REPLY if no_reply else 0)
        header = Header(msg_id, command, HEADER_SIZE + len(payload), flags)
        try:
            self.send_raw(header.encode() + payload, fds)
            if no_reply:
                return None
            return self._wait_reply(msg_id, command)
        except OSError as err:
            self.closed = True
            raise RemoteProtocolError(err.errno or errno.EIO,
                                      f"{command.name}: connection lost: {err}") from err

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
        """Trapped register read (fast path: one send, one recv_into)."""
        if not self._framer.idle:
            return int.from_bytes(self.read_bytes(region, offset, size), "little")
        self._next_id = msg_id = (self._next_id + 1) & 0xFFFF
        _ACCESS.pack_into(self._send_buf, 0, msg_id, _REGION_READ, _ACCESS_SIZE, 0, 0,
                          offset, region, size)
        self.sock.send(self._request_view)
        want = _ACCESS_SIZE + size
        rbuf = self._recv_buf
        nbytes = self.sock.recv_into(rbuf)
        if nbytes == want:
            rid, _cmd, rsize, rflags, _e, _o, _r, rcount = _ACCESS.unpack_from(rbuf)
            if rid == msg_id and rflags == _REPLY and rsize == want and rcount == size:
                return int.from_bytes(rbuf[_ACCESS_SIZE:want], "little")
        return int.from_bytes(self._finish_slow(msg_id, Command.REGION_READ, nbytes)
                              .payload[16:], "little")

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        """Trapped register write (fast path as :meth:`read`)."""
        if not self._framer.idle:
            self.write_bytes(region, offset, value.to_bytes(size, "little"))
            return
        self._next_id = msg_id = (self._next_id + 1) & 0xFFFF
        buf = self._send_buf
        _ACCESS.pack_into(buf, 0, msg_id, _REGION_WRITE, _ACCESS_SIZE + size, 0, 0,
                          offset, region, size)
        buf[_ACCESS_SIZE:_ACCESS_SIZE + size] = value.to_bytes(size, "little")
        self.sock.send(self._write_views[size])
        nbytes = self.sock.recv_into(self._recv_buf)
        if nbytes == _ACCESS_SIZE:
            rid, _c, rsize, rflags, _e, _o, _r, _n = _ACCESS.unpack_from(self._recv_buf)
            if rid == msg_id and rflags == _REPLY and rsize == _ACCESS_SIZE:
                return
        self._finish_slow(msg_id, Command.REGION_WRITE, nbytes)

    def _finish_slow(self, msg_id: int, command: Command, nbytes: int) -> Message:
        """The fast path got something else: hand the bytes to the framer and wait."""
        if nbytes == 0:
            self._framer.receive_data(b"")
        else:
            self._framer.receive_data(bytes(self._recv_view[:nbytes]))
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
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()

    def __enter__(self) -> VfioUserClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


__all__ = ["HEADER", "MappedArea", "MappedRegion", "RegionDescription", "VfioUserClient"]
