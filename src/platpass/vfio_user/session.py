"""One client's vfio-user session with one device: decoded requests in, replies out.

This is where the protocol meets :class:`~platpass.vfio_device.device.VfioDevice`. It does
no I/O of its own (the server moves the bytes), so it can be driven directly by tests.

Decisions taken from the specification (``docs/interop/vfio-user.rst``):

* **Negotiation.** The first command must be VERSION. Any other command before it is
  answered with EINVAL and the session keeps waiting for VERSION. A proposed major
  version other than 0 is answered with EINVAL and the connection is closed (the server
  "closes the connection if it cannot support the advertised version"). The reply's
  minor is ``min(proposed, 1)``. The reply's capability object is a subset of the
  proposed one, as the specification requires: for each of ``max_msg_fds``,
  ``max_data_xfer_size``, ``max_dma_maps`` and ``pgsizes`` the client named, the server
  states its own value; ``write_multiple: true`` is echoed when proposed (REGION_WRITE_MULTI
  is then accepted); ``twin_socket`` and ``migration`` are never offered (not supported).
  A second VERSION is EINVAL.
* **Limits.** A REGION_READ/WRITE ``count`` above our ``max_data_xfer_size`` is E2BIG;
  a message carrying more fds than ``max_msg_fds`` is EINVAL (fds closed). If the client
  said it can receive no fds (``max_msg_fds`` 0), regions are reported without MMAP.
* **argsz.** A request ``argsz`` below the fixed reply payload is EINVAL. For region info
  whose capability chain does not fit, the reply holds the fixed part only, with
  ``argsz`` = the size needed and no CAPS flag (the client retries with a bigger argsz);
  the MMAP fd is sent with every MMAP reply, as the specification says.
* **Region access.** Any ``count`` inside the region is accepted: naturally aligned 1, 2,
  4 or 8 bytes is one device access; anything else is split into naturally aligned
  pieces of at most 4 bytes (what Linux's vfio-platform does). Bounds and permissions are
  checked before the first piece, so a refused access touches nothing.
* **Unsupported commands.** DEVICE_GET_REGION_IO_FDS (no ioeventfds offered),
  DMA_READ/DMA_WRITE (server-to-client commands), REGION_WRITE_MULTI unless negotiated,
  MIG_DATA_READ/WRITE: ENOTSUP. Every write of a REGION_WRITE_MULTI is checked before the
  first is applied. DEVICE_FEATURE: ENOTTY (what VFIO answers for a feature it
  lacks; there is no migration). Unknown command numbers: ENOSYS.
* **DMA_UNMAP** must name exactly one earlier mapping (address and size), else ENOENT;
  flag ``VFIO_DMA_UNMAP_FLAG_ALL`` (address and size 0) drops every mapping.
* **fds.** DMA_MAP may carry one fd and SET_IRQS with DATA_EVENTFD ``count`` fds (or none,
  which tears the eventfds down); any other fd is EINVAL. Every received fd is closed once
  the request is handled (the device dup()s what it keeps; DMA memory is never mapped).
* **No_reply** commands get no reply, not even an error one. They are handled in order
  like any other (a posted REGION_WRITE is done before the next message is looked at);
  one that fails is counted in ``failed_posted`` and logged as a warning, since nobody
  else will ever hear of it.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from platpass.errors import HostError, RemoteProtocolError, VfioError
from platpass.lograte import LogLimiter
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqSetFlags, RegionFlags
from platpass.vfio_user.protocol import messages as m
from platpass.vfio_user.protocol.connection import Message, Rejected
from platpass.vfio_user.protocol.header import (
    HEADER_SIZE,
    VERSION_MAJOR,
    VERSION_MINOR,
    Command,
    Header,
    MessageType,
    reply_header,
)

log = logging.getLogger(__name__)

#: Default of ``max_data_xfer_size`` in the specification.
DEFAULT_MAX_DATA_XFER = 1 << 20


@dataclass(frozen=True, slots=True)
class Limits:
    """What this server accepts from one client."""

    max_msg_fds: int = 8
    max_data_xfer_size: int = DEFAULT_MAX_DATA_XFER
    max_dma_maps: int = 65535
    pgsizes: int = 4096

    @property
    def max_message_size(self) -> int:
        """Biggest message a client may send: a REGION_WRITE of the largest count."""
        return HEADER_SIZE + m.REGION_ACCESS.size + self.max_data_xfer_size


@dataclass(slots=True)
class Reply:
    """A reply to send: header, payload, fds (the session keeps owning ``fds``)."""

    header: Header
    payload: bytes = b""
    fds: tuple[int, ...] = ()
    close_after: bool = False


@dataclass(slots=True)
class PeerCapabilities:
    """What the client said it can receive (spec defaults when it said nothing)."""

    max_msg_fds: int = 1
    max_data_xfer_size: int = DEFAULT_MAX_DATA_XFER
    proposed: dict[str, Any] = field(default_factory=dict)


def _close_all(fds: tuple[int, ...]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            log.debug("fd %d was already closed", fd)


class Session:
    """Handles the requests of one connected client for one device."""

    def __init__(self, device: VfioDevice, limits: Limits | None = None, *,
                 limiter: LogLimiter | None = None) -> None:
        self.device = device
        self.limits = limits or Limits()
        #: What this client makes us log, rate-limited (one client can send millions of
        #: bad messages; the server's log must not repeat them all).
        self.log = limiter or LogLimiter(log, source=f"client of {device.node.path}")
        self.negotiated = False
        self.write_multiple = False
        self.peer = PeerCapabilities()
        #: no-reply commands (posted writes) that failed: refused or a backend failure.
        self.failed_posted = 0
        info = device.info
        self._num_regions = info.num_regions
        self._num_irqs = info.num_irqs
        #: Per region: size and flags (fixed for the device's life; the server's fast path
        #: checks accesses against them too).
        self.region_sizes = tuple(device.region_info(i).size for i in range(info.num_regions))
        self.region_flags = tuple(device.region_info(i).flags
                                   for i in range(info.num_regions))
        #: Per IRQ index: how many interrupts it has (bounds SET_IRQS before decoding).
        self._irq_counts = tuple(device.irq_info(i).count for i in range(info.num_irqs))
        self._handlers: dict[int, Callable[[Header, Any, tuple[int, ...]], Reply]] = {
            Command.VERSION: self._version,
            Command.DMA_MAP: self._dma_map,
            Command.DMA_UNMAP: self._dma_unmap,
            Command.DEVICE_GET_INFO: self._device_info,
            Command.DEVICE_GET_REGION_INFO: self._region_info,
            Command.DEVICE_GET_REGION_IO_FDS: self._region_io_fds,
            Command.DEVICE_GET_IRQ_INFO: self._irq_info,
            Command.DEVICE_SET_IRQS: self._set_irqs,
            Command.REGION_READ: self._region_read,
            Command.REGION_WRITE: self._region_write,
            Command.DEVICE_RESET: self._reset,
            Command.REGION_WRITE_MULTI: self._region_write_multi,
        }

    # ------------------------------------------------------------------ entry points

    def handle(self, event: Message | Rejected) -> Reply | None:
        """Handle one framed message; returns the reply to send, or None (no reply due).

        Never raises for bad input: every refusal becomes an errno reply. All fds the
        message carried are closed before this returns.
        """
        header = event.header
        fds = event.fds
        try:
            if header.is_reply:
                # We never send commands, so no reply is expected; one cannot be answered.
                self.log.warning("dropping unsolicited reply (command %d, id %d)",
                                 header.command, header.msg_id)
                return None
            if not header.is_command:
                return self._error(header, errno.EINVAL, f"message type {header.type} is "
                                   "neither command nor reply")
            if isinstance(event, Rejected):
                return self._error(header, event.errno, event.reason)
            return self._dispatch(header, event.payload, fds)
        except (HostError, OSError) as err:
            # The backend failed (a UIO device removed under us, an I/O error): the client
            # learns it as EIO, the operator from the log; the server carries on.
            self.log.warning("%scommand %d (id %d): backend failure: %s",
                             "posted " if header.no_reply else "", header.command,
                             header.msg_id, err)
            return self._no_reply_failed() if header.no_reply \
                else Reply(reply_header(header, 0, errno.EIO))
        except Exception:  # a bug must cost one reply, not every device of the server
            self.log.log(logging.ERROR, "command %d (id %d) failed unexpectedly",
                         header.command, header.msg_id, exc_info=True)
            return self._no_reply_failed() if header.no_reply \
                else Reply(reply_header(header, 0, errno.EIO))
        finally:
            _close_all(fds)

    def _dispatch(self, header: Header, payload: bytes, fds: tuple[int, ...]) -> Reply | None:
        command = header.command
        try:
            if command not in self._handlers:
                raise self._unsupported(command)
            if not self.negotiated and command != Command.VERSION:
                raise RemoteProtocolError(errno.EINVAL, "VERSION must be negotiated first")
            request = m.decode_request(command, payload)
            if fds and command not in (Command.DMA_MAP, Command.DEVICE_SET_IRQS):
                raise RemoteProtocolError(errno.EINVAL, f"command {command} carries fds")
            reply = self._handlers[command](header, request, fds)
        except (RemoteProtocolError, VfioError) as err:
            return self._error(header, err.errno, err.message)
        if header.no_reply and not reply.close_after:
            return None
        return reply

    def _error(self, header: Header, err: int, why: str) -> Reply | None:
        if header.no_reply:
            # Posted: the client will never see this errno, so the log must say it.
            self.log.warning("posted command %d (id %d) failed: %s: %s", header.command,
                             header.msg_id, errno.errorcode.get(err, err), why,
                             extra={"device": self.device.node.path, "errno": err,
                                    "event": "posted_failed"})
            return self._no_reply_failed()
        self.log.info("command %d (id %d) refused: %s: %s", header.command, header.msg_id,
                      errno.errorcode.get(err, err), why,
                      extra={"device": self.device.node.path, "errno": err, "event": "refused"})
        return Reply(reply_header(header, 0, err))

    def _no_reply_failed(self) -> Reply | None:
        """Count a failed no-reply command; its reply is nothing."""
        self.failed_posted += 1
        return None

    @staticmethod
    def _unsupported(command: int) -> RemoteProtocolError:
        if command == Command.DEVICE_FEATURE:
            return RemoteProtocolError(errno.ENOTTY, "no device features (no migration)")
        if command in (Command.DMA_READ, Command.DMA_WRITE,
                       Command.MIG_DATA_READ, Command.MIG_DATA_WRITE):
            return RemoteProtocolError(errno.ENOTSUP, f"command {command} not supported")
        return RemoteProtocolError(errno.ENOSYS, f"unknown command {command}")

    @staticmethod
    def _ok(header: Header, payload: bytes = b"", fds: tuple[int, ...] = ()) -> Reply:
        return Reply(reply_header(header, len(payload)), payload, fds)

    # ------------------------------------------------------------------ handlers

    def _version(self, header: Header, request: m.Version, _fds: tuple[int, ...]) -> Reply:
        if self.negotiated:
            raise RemoteProtocolError(errno.EINVAL, "VERSION already negotiated")
        if request.major != VERSION_MAJOR:
            log.info("client proposed major version %d; closing", request.major)
            return Reply(reply_header(header, 0, errno.EINVAL), close_after=True)
        proposed = request.capabilities
        ours: dict[str, Any] = {}
        if "max_msg_fds" in proposed:
            ours["max_msg_fds"] = self.limits.max_msg_fds
        if "max_data_xfer_size" in proposed:
            ours["max_data_xfer_size"] = self.limits.max_data_xfer_size
        if "max_dma_maps" in proposed:
            ours["max_dma_maps"] = min(self.limits.max_dma_maps, proposed["max_dma_maps"]) \
                or self.limits.max_dma_maps
        if proposed.get("write_multiple") is True:
            ours["write_multiple"] = True
            self.write_multiple = True
        if "pgsizes" in proposed:
            # The emulated IOMMU never maps memory: any page size the client uses is fine.
            ours["pgsizes"] = proposed["pgsizes"] or self.limits.pgsizes
        self.peer = PeerCapabilities(
            max_msg_fds=proposed.get("max_msg_fds", 1),
            max_data_xfer_size=proposed.get("max_data_xfer_size", DEFAULT_MAX_DATA_XFER),
            proposed=dict(proposed),
        )
        self.negotiated = True
        minor = min(request.minor, VERSION_MINOR)
        return self._ok(header, m.Version(VERSION_MAJOR, minor, ours).encode())

    def _dma_map(self, header: Header, request: m.DmaMap, fds: tuple[int, ...]) -> Reply:
        if len(fds) > 1:
            raise RemoteProtocolError(errno.EINVAL, f"DMA_MAP carries {len(fds)} fds")
        # Emulated IOMMU: the memory behind the fd is never mapped (the fd is closed by
        # handle()); only the range is recorded.
        self.device.dma_map(request.address, request.size, int(request.flags))
        return self._ok(header)

    def _dma_unmap(self, header: Header, request: m.DmaUnmap, _fds: tuple[int, ...]) -> Reply:
        if request.argsz < m.DMA_UNMAP.size:
            raise RemoteProtocolError(errno.EINVAL, f"DMA_UNMAP argsz {request.argsz} < 24")
        if request.unmap_all:
            if self.device.iommu.deny:
                raise VfioError(errno.ENOTSUP, "DMA unmapping refused: --dma deny")
            self.device.iommu.clear()
        else:
            if not self.device.iommu.deny:
                # A range that is empty, unaligned or wraps past 2**64 is EINVAL, as for
                # DMA_MAP, before any lookup could call it "not mapped" (ENOENT).
                self.device.iommu.check_range("DMA_UNMAP", request.address, request.size)
            # The specification: "address and size ... must match exactly a previous
            # mapping" (the IOMMU alone would also accept a range holding several).
            if not any(mapping.iova == request.address and mapping.size == request.size
                       for mapping in self.device.iommu.mappings) \
                    and not self.device.iommu.deny:
                raise RemoteProtocolError(
                    errno.ENOENT, f"DMA_UNMAP [{request.address:#x}, +{request.size:#x}) "
                    "matches no mapping exactly")
            self.device.dma_unmap(request.address, request.size)
        echoed = m.DmaUnmap(m.DMA_UNMAP.size, request.flags, request.address, request.size)
        return self._ok(header, echoed.encode())

    def _device_info(self, header: Header, request: m.DeviceInfo, _f: tuple[int, ...]) -> Reply:
        if request.argsz < m.DEVICE_INFO.size:
            raise RemoteProtocolError(errno.EINVAL, f"argsz {request.argsz} < 16")
        info = self.device.info
        reply = m.DeviceInfo(m.DEVICE_INFO.size, int(info.flags), info.num_regions,
                             info.num_irqs)
        return self._ok(header, reply.encode())

    def _region_info(self, header: Header, request: m.RegionInfoRequest,
                     _fds: tuple[int, ...]) -> Reply:
        if request.argsz < m.REGION_INFO.size:
            raise RemoteProtocolError(errno.EINVAL, f"argsz {request.argsz} < 32")
        info = self.device.region_info(request.index)
        flags = int(info.flags)
        source = info.map_source
        areas = info.sparse_areas
        if source is None or self.peer.max_msg_fds < 1:
            flags &= ~int(RegionFlags.MMAP | RegionFlags.CAPS)
            areas = None
            source = None
        if not flags & RegionFlags.MMAP:
            areas, source = None, None
        offset = source.offset if source is not None else 0
        wire_areas = (tuple(m.SparseMmapArea(a.offset, a.size) for a in areas)
                      if areas is not None else None)
        needed = m.REGION_INFO.size
        if wire_areas is not None:
            needed += m.RegionInfo.caps_size(wire_areas)
        if wire_areas is not None and request.argsz >= needed:
            reply = m.RegionInfo(needed, flags | RegionFlags.CAPS, info.index,
                                 m.REGION_INFO.size, info.size, offset, wire_areas)
        else:
            reply = m.RegionInfo(needed, flags & ~int(RegionFlags.CAPS), info.index, 0,
                                 info.size, offset)
        fds = (source.fd,) if source is not None else ()
        return self._ok(header, reply.encode(), fds)

    def _region_io_fds(self, header: Header, request: m.RegionIoFdsRequest,
                       _fds: tuple[int, ...]) -> Reply:
        if request.index >= self._num_regions:
            raise RemoteProtocolError(errno.EINVAL, f"region {request.index} out of range")
        raise RemoteProtocolError(errno.ENOTSUP, "no ioeventfd/ioregionfd sub-regions")

    def _irq_info(self, header: Header, request: m.IrqInfo, _fds: tuple[int, ...]) -> Reply:
        if request.argsz < m.IRQ_INFO.size:
            raise RemoteProtocolError(errno.EINVAL, f"argsz {request.argsz} < 16")
        if request.index >= self._num_irqs:
            raise RemoteProtocolError(errno.EINVAL, f"IRQ index {request.index} out of range")
        info = self.device.irq_info(request.index)
        reply = m.IrqInfo(m.IRQ_INFO.size, int(info.flags), info.index, info.count)
        return self._ok(header, reply.encode())

    def _set_irqs(self, header: Header, request: m.SetIrqs, fds: tuple[int, ...]) -> Reply:
        if request.index >= self._num_irqs:
            raise RemoteProtocolError(errno.EINVAL, f"IRQ index {request.index} out of range")
        flags = int(request.flags)
        if request.start + request.count > self._irq_counts[request.index]:
            # Checked before anything is sized by ``count``: a 28-byte message must not
            # make the server build a tuple of 2**32 "no fd" entries (found by fuzzing).
            raise RemoteProtocolError(
                errno.EINVAL, f"SET_IRQS start {request.start} count {request.count} "
                f"outside index {request.index} of {self._irq_counts[request.index]}")
        if flags & IrqSetFlags.DATA_EVENTFD:
            if not fds:
                eventfds: tuple[int, ...] = (-1,) * request.count
            elif len(fds) == request.count:
                eventfds = fds
            else:
                raise RemoteProtocolError(
                    errno.EINVAL, f"SET_IRQS count {request.count} but {len(fds)} fds")
            self.device.set_irqs(request.index, flags, request.start, request.count,
                                 fds=eventfds)
        else:
            if fds:
                raise RemoteProtocolError(errno.EINVAL, "SET_IRQS without DATA_EVENTFD has fds")
            self.device.set_irqs(request.index, flags, request.start, request.count,
                                 bools=request.bools)
        return self._ok(header)

    def check_access(self, region: int, offset: int, count: int, write: bool) -> None:
        """Refuse an access before any of it happens (EINVAL/E2BIG)."""
        if count == 0:
            raise RemoteProtocolError(errno.EINVAL, "zero-length region access")
        if count > self.limits.max_data_xfer_size:
            raise RemoteProtocolError(
                errno.E2BIG, f"count {count} > max_data_xfer_size "
                f"{self.limits.max_data_xfer_size}")
        if region >= self._num_regions:
            raise RemoteProtocolError(errno.EINVAL, f"region {region} out of range")
        if offset + count > self.region_sizes[region]:
            raise RemoteProtocolError(
                errno.EINVAL, f"access [{offset:#x}, +{count}) outside region {region} "
                f"of {self.region_sizes[region]:#x} bytes")
        needed = RegionFlags.WRITE if write else RegionFlags.READ
        if not self.region_flags[region] & needed:
            raise RemoteProtocolError(errno.EINVAL, f"region {region} is not {needed.name}")

    @staticmethod
    def pieces(offset: int, count: int) -> list[tuple[int, int]]:
        """Split an access into device accesses (see the module docstring)."""
        if count in (1, 2, 4, 8) and offset % count == 0:
            return [(offset, count)]
        out = []
        end = offset + count
        while offset < end:
            left = end - offset
            size = 4 if left >= 4 and offset % 4 == 0 else 2 if left >= 2 and offset % 2 == 0 \
                else 1
            out.append((offset, size))
            offset += size
        return out

    def _region_read(self, header: Header, request: m.RegionRead, _f: tuple[int, ...]) -> Reply:
        self.check_access(request.region, request.offset, request.count, write=False)
        read = self.device.read
        data = b"".join(read(request.region, at, size).to_bytes(size, "little")
                        for at, size in self.pieces(request.offset, request.count))
        reply = m.RegionReadReply(request.offset, request.region, request.count, data)
        return self._ok(header, reply.encode())

    def _region_write(self, header: Header, request: m.RegionWrite,
                      _f: tuple[int, ...]) -> Reply:
        self.check_access(request.region, request.offset, request.count, write=True)
        write = self.device.write
        base = request.offset
        for at, size in self.pieces(request.offset, request.count):
            write(request.region, at, size,
                  int.from_bytes(request.data[at - base:at - base + size], "little"))
        reply = m.RegionWriteReply(request.offset, request.region, request.count)
        return self._ok(header, reply.encode())

    def _region_write_multi(self, header: Header, request: m.RegionWriteMulti,
                            _f: tuple[int, ...]) -> Reply:
        if not self.write_multiple:
            raise RemoteProtocolError(errno.ENOTSUP, "write_multiple was not negotiated")
        for one in request.writes:
            self.check_access(one.region, one.offset, one.count, write=True)
        write = self.device.write
        for one in request.writes:
            for at, size in self.pieces(one.offset, one.count):
                rel = at - one.offset
                write(one.region, at, size, int.from_bytes(one.data[rel:rel + size], "little"))
        return self._ok(header, m.RegionWriteMultiReply(len(request.writes)).encode())

    def _reset(self, header: Header, _request: m.DeviceReset, _f: tuple[int, ...]) -> Reply:
        self.device.reset()
        return self._ok(header)


#: The header type of a reply; exported for the server's fast path.
REPLY_TYPE = int(MessageType.REPLY)
