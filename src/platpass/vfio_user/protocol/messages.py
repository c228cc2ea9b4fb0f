"""Typed payloads of every vfio-user message a platform device needs, with their codecs.

Each class is the payload that follows the 16-byte header (the header and the fds travel
beside it, see :mod:`.connection`). ``encode()`` gives the payload bytes; the class method
``decode(payload)`` parses them and raises :class:`RemoteProtocolError` carrying the errno
the server replies with (always ``EINVAL`` for a malformed payload). Decoding checks the
*structure* (sizes, reserved fields, flag combinations); what the values mean for a
device (a region index out of range, a too-small ``argsz``) is judged by the session.

Layouts follow ``docs/interop/vfio-user.rst`` (and ``linux/vfio.h`` where it defers to
it). Requests and replies share a class where the specification gives them one layout.
"""

from __future__ import annotations

import errno
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, ClassVar, Self, TypeVar

from platpass.errors import LocalProtocolError, RemoteProtocolError
from platpass.vfio_device.uapi import (
    DmaMapFlags,
    IrqSetFlags,
    RegionCapId,
)
from platpass.vfio_user.protocol.header import Command

_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF

# Precompiled layouts (host byte order, standard sizes, no padding).
VERSION_FIXED = struct.Struct("=HH")
DMA_MAP = struct.Struct("=IIQQQ")  # argsz flags offset address size
DMA_UNMAP = struct.Struct("=IIQQ")  # argsz flags address size
DEVICE_INFO = struct.Struct("=IIII")  # argsz flags num_regions num_irqs
REGION_INFO = struct.Struct("=IIIIQQ")  # argsz flags index cap_offset size offset
CAP_HEADER = struct.Struct("=HHI")  # id version next
SPARSE_FIXED = struct.Struct("=II")  # nr_areas reserved
SPARSE_AREA = struct.Struct("=QQ")  # offset size
IO_FDS = struct.Struct("=IIII")  # argsz flags index count
IRQ_INFO = struct.Struct("=IIII")  # argsz flags index count
IRQ_SET = struct.Struct("=IIIII")  # argsz flags index start count
REGION_ACCESS = struct.Struct("=QII")  # offset region count
DMA_ACCESS = struct.Struct("=QQ")  # address count
DMA_WRITE_REPLY = struct.Struct("=QI")  # address count(u32)
NO_PAYLOAD = struct.Struct("=")  # nothing after the header

#: Sparse-mmap capability version (linux/vfio.h VFIO_REGION_INFO_CAP_SPARSE_MMAP).
SPARSE_MMAP_VERSION = 1
#: VFIO_DMA_UNMAP_FLAG_ALL: unmap every mapping (address and size must be zero).
DMA_UNMAP_FLAG_ALL = 1 << 1


def _reject(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(errno.EINVAL, message)


def _exact(payload: bytes | memoryview, size: int, what: str) -> None:
    if len(payload) != size:
        raise _reject(f"{what} payload must be {size} bytes, got {len(payload)}")


def _check_uint(value: int, limit: int, what: str) -> None:
    if not 0 <= value <= limit:
        raise LocalProtocolError(f"{what}={value} does not fit its field")


# --------------------------------------------------------------------------- shared codecs


class _FixedStruct:
    """A payload that is exactly one fixed layout whose fields are the dataclass's
    leading fields, in order.

    Most messages are just that, so they share one encode/decode here and state only what
    differs (layout, the name in error messages) through :func:`_layout`. A class with
    checks of its own overrides ``decode`` and still shares ``encode``.
    """

    __slots__ = ()
    _LAYOUT: ClassVar[struct.Struct]
    #: The message's name in error messages (tests compare them).
    _NAME: ClassVar[str]
    #: The values of the fields the layout holds, as a tuple (an attrgetter: C speed,
    #: as REGION_READ/WRITE go through here on the client and the server's full path).
    _HEAD: ClassVar[Callable[[Any], tuple[Any, ...]]]

    def encode(self) -> bytes:
        # _HEAD is a plain function stored on the class (never bound): called with self.
        return self._LAYOUT.pack(*self._HEAD(self))  # type: ignore[call-arg]

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Self:
        # Inline rather than via _unpack: one call less on REGION_READ/WRITE.
        _exact(payload, cls._LAYOUT.size, cls._NAME)
        return cls(*cls._LAYOUT.unpack_from(payload))

    @classmethod
    def _unpack(cls, payload: bytes | memoryview) -> tuple[Any, ...]:
        """The layout's values, once the payload is checked to be exactly its size (for
        a ``decode`` that checks the values too)."""
        _exact(payload, cls._LAYOUT.size, cls._NAME)
        return cls._LAYOUT.unpack_from(payload)


class _WithData(_FixedStruct):
    """A fixed layout followed by the bytes of ``data``, whose length the layout's last
    field (``count``) states: DMA_WRITE, REGION_READ's reply, REGION_WRITE. SET_IRQS shares
    the encode only (its data length depends on its flags)."""

    __slots__ = ()
    #: The payload's name in the "shorter than" error.
    _WHOLE: ClassVar[str]

    def encode(self) -> bytes:
        data: bytes = self.data  # type: ignore[attr-defined]
        return self._LAYOUT.pack(*self._HEAD(self)) + data  # type: ignore[call-arg]

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Self:
        layout = cls._LAYOUT
        if len(payload) < layout.size:
            raise _reject(f"{cls._WHOLE} shorter than {layout.size} bytes")
        head = layout.unpack_from(payload)
        data = bytes(payload[layout.size:])
        if len(data) != head[-1]:
            raise _reject(f"{cls._NAME} count {head[-1]} but {len(data)} data bytes")
        return cls(*head, data)  # type: ignore[call-arg]


_C = TypeVar("_C", bound=type[_FixedStruct])


def _layout(layout: struct.Struct, name: str, whole: str | None = None
            ) -> Callable[[_C], _C]:
    """Class decorator (outside ``@dataclass``): bind ``layout`` and the error-message
    ``name`` (``whole``: the name of the entire payload, default ``name``) and derive which
    fields the layout holds from the dataclass's field order, so nothing is said twice."""

    def bind(cls: _C) -> _C:
        fields = len(layout.unpack(bytes(layout.size)))
        names: tuple[str, ...] = cls.__match_args__[:fields]  # type: ignore[attr-defined]
        # attrgetter is no descriptor, but a function would be bound: staticmethod.
        if len(names) > 1:
            cls._HEAD = attrgetter(*names)
        elif names:
            (only,) = names
            cls._HEAD = staticmethod(lambda m: (getattr(m, only),))
        else:
            cls._HEAD = staticmethod(lambda _m: ())
        cls._LAYOUT = layout
        cls._NAME = name
        cls._WHOLE = whole or name  # type: ignore[attr-defined]
        return cls

    return bind


# --------------------------------------------------------------------------- VERSION

#: Capability names this implementation understands, with the JSON type each must have.
_CAPABILITY_TYPES: dict[str, type] = {
    "max_msg_fds": int,
    "max_data_xfer_size": int,
    "max_dma_maps": int,
    "pgsizes": int,
    "twin_socket": dict,
    "write_multiple": bool,
    "migration": dict,
}


@dataclass(frozen=True, slots=True)
class Version:
    """VERSION request and reply: version numbers and the JSON capability object.

    ``capabilities`` is the object under ``"capabilities"`` (empty when absent).
    ``has_json`` records whether the version data was present at all.
    """

    COMMAND: ClassVar[Command] = Command.VERSION
    major: int
    minor: int
    capabilities: dict[str, Any] = field(default_factory=dict)
    has_json: bool = True

    def encode(self) -> bytes:
        _check_uint(self.major, 0xFFFF, "major")
        _check_uint(self.minor, 0xFFFF, "minor")
        fixed = VERSION_FIXED.pack(self.major, self.minor)
        if not self.has_json:
            return fixed
        text = json.dumps({"capabilities": self.capabilities}, separators=(",", ":"))
        # The version data is a NUL-terminated UTF-8 JSON string.
        return fixed + text.encode() + b"\0"

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Version:
        if len(payload) < VERSION_FIXED.size:
            raise _reject(f"VERSION payload needs 4 bytes, got {len(payload)}")
        major, minor = VERSION_FIXED.unpack_from(payload)
        data = bytes(payload[VERSION_FIXED.size:])
        if not data:
            return cls(major, minor, {}, has_json=False)
        if data[-1:] != b"\0":
            raise _reject("VERSION data is not NUL-terminated")
        text = data[:-1]
        if b"\0" in text:
            raise _reject("VERSION data has an embedded NUL")
        if not text.strip():
            return cls(major, minor, {}, has_json=True)  # an empty string: no capabilities
        try:
            document = json.loads(text.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise _reject(f"VERSION data is not UTF-8 JSON: {err}") from err
        if not isinstance(document, dict):
            raise _reject("VERSION data is not a JSON object")
        caps = document.get("capabilities", {})
        if not isinstance(caps, dict):
            raise _reject("'capabilities' is not a JSON object")
        for name, expected in _CAPABILITY_TYPES.items():
            if name not in caps:
                continue
            value = caps[name]
            if expected is int:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise _reject(f"capability {name!r} must be a non-negative integer")
            elif not isinstance(value, expected):
                raise _reject(f"capability {name!r} must be a JSON {expected.__name__}")
        return cls(major, minor, dict(caps), has_json=True)


# --------------------------------------------------------------------------- DMA


@_layout(DMA_MAP, "DMA_MAP")
@dataclass(frozen=True, slots=True)
class DmaMap(_FixedStruct):
    """DMA_MAP request (the reply has no payload). A mappable region's fd travels with it."""

    COMMAND: ClassVar[Command] = Command.DMA_MAP
    argsz: int
    flags: DmaMapFlags
    offset: int
    address: int
    size: int

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> DmaMap:
        argsz, flags, offset, address, size = cls._unpack(payload)
        if argsz < DMA_MAP.size:
            raise _reject(f"DMA_MAP argsz {argsz} < {DMA_MAP.size}")
        if flags & ~int(DmaMapFlags.READ | DmaMapFlags.WRITE):
            raise _reject(f"DMA_MAP has unknown flags {flags:#x}")
        if size == 0 or address + size - 1 > _U64:
            raise _reject(f"DMA_MAP range address={address:#x} size={size:#x} is invalid")
        return cls(argsz, DmaMapFlags(flags), offset, address, size)


@_layout(DMA_UNMAP, "DMA_UNMAP")
@dataclass(frozen=True, slots=True)
class DmaUnmap(_FixedStruct):
    """DMA_UNMAP request, and its reply (the server echoes the entry, argsz set to 24)."""

    COMMAND: ClassVar[Command] = Command.DMA_UNMAP
    argsz: int
    flags: int
    address: int
    size: int

    @property
    def unmap_all(self) -> bool:
        return bool(self.flags & DMA_UNMAP_FLAG_ALL)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> DmaUnmap:
        argsz, flags, address, size = cls._unpack(payload)
        if flags & ~DMA_UNMAP_FLAG_ALL:
            raise _reject(f"DMA_UNMAP has unsupported flags {flags:#x}")
        if flags & DMA_UNMAP_FLAG_ALL:
            if address or size:
                raise _reject("DMA_UNMAP with FLAG_ALL needs address and size 0")
        elif size == 0:
            raise _reject("DMA_UNMAP of an empty range")
        return cls(argsz, flags, address, size)


@_layout(DMA_ACCESS, "DMA_READ")
@dataclass(frozen=True, slots=True)
class DmaRead(_FixedStruct):
    """DMA_READ request (server -> client); platpass never sends it."""

    COMMAND: ClassVar[Command] = Command.DMA_READ
    address: int
    count: int


@_layout(DMA_ACCESS, "DMA_WRITE", "DMA_WRITE payload")
@dataclass(frozen=True, slots=True)
class DmaWrite(_WithData):
    """DMA_WRITE request (server -> client); platpass never sends it."""

    COMMAND: ClassVar[Command] = Command.DMA_WRITE
    address: int
    count: int
    data: bytes


# --------------------------------------------------------------------------- device info


@_layout(DEVICE_INFO, "DEVICE_GET_INFO")
@dataclass(frozen=True, slots=True)
class DeviceInfo(_FixedStruct):
    """DEVICE_GET_INFO request (argsz, other fields zero) and reply."""

    COMMAND: ClassVar[Command] = Command.DEVICE_GET_INFO
    argsz: int
    flags: int = 0
    num_regions: int = 0
    num_irqs: int = 0


@dataclass(frozen=True, slots=True)
class RegionInfoRequest:
    """DEVICE_GET_REGION_INFO request: ``argsz`` (reply room) and the region ``index``."""

    COMMAND: ClassVar[Command] = Command.DEVICE_GET_REGION_INFO
    argsz: int
    index: int

    def encode(self) -> bytes:
        return REGION_INFO.pack(self.argsz, 0, self.index, 0, 0, 0)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> RegionInfoRequest:
        _exact(payload, REGION_INFO.size, "DEVICE_GET_REGION_INFO")
        argsz, _flags, index, _cap, _size, _offset = REGION_INFO.unpack_from(payload)
        return cls(argsz, index)


@dataclass(frozen=True, slots=True)
class SparseMmapArea:
    """One mappable area of a region, relative to the region info ``offset``."""

    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """DEVICE_GET_REGION_INFO reply.

    ``sparse_areas`` is the sparse-mmap capability's area list when the capability is in
    the reply (``cap_offset`` then points at it), None when it is not. When the client's
    ``argsz`` was too small for the capability chain, the reply carries only the fixed
    part with ``argsz`` = the size needed, CAPS set and ``cap_offset`` 0 (as VFIO does).
    """

    COMMAND: ClassVar[Command] = Command.DEVICE_GET_REGION_INFO
    argsz: int
    flags: int
    index: int
    cap_offset: int
    size: int
    offset: int
    sparse_areas: tuple[SparseMmapArea, ...] | None = None

    @staticmethod
    def caps_size(areas: tuple[SparseMmapArea, ...]) -> int:
        """Bytes the sparse-mmap capability takes in the chain."""
        return CAP_HEADER.size + SPARSE_FIXED.size + SPARSE_AREA.size * len(areas)

    def encode(self) -> bytes:
        fixed = REGION_INFO.pack(self.argsz, self.flags, self.index, self.cap_offset,
                                 self.size, self.offset)
        if self.sparse_areas is None:
            return fixed
        parts = [fixed, CAP_HEADER.pack(RegionCapId.SPARSE_MMAP, SPARSE_MMAP_VERSION, 0),
                 SPARSE_FIXED.pack(len(self.sparse_areas), 0)]
        parts.extend(SPARSE_AREA.pack(a.offset, a.size) for a in self.sparse_areas)
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> RegionInfo:
        """Parse the reply, walking the capability chain (offsets are relative to the
        start of the region info). Unknown capabilities are skipped."""
        if len(payload) < REGION_INFO.size:
            raise _reject("region info reply shorter than 32 bytes")
        argsz, flags, index, cap_offset, size, offset = REGION_INFO.unpack_from(payload)
        areas: tuple[SparseMmapArea, ...] | None = None
        seen: set[int] = set()
        at = cap_offset
        while at:
            if at in seen or at < REGION_INFO.size or at + CAP_HEADER.size > len(payload):
                raise _reject(f"region info capability chain is broken at {at}")
            seen.add(at)
            cap_id, _version, nxt = CAP_HEADER.unpack_from(payload, at)
            if cap_id == RegionCapId.SPARSE_MMAP:
                body = at + CAP_HEADER.size
                if body + SPARSE_FIXED.size > len(payload):
                    raise _reject("sparse mmap capability truncated")
                nr_areas, _reserved = SPARSE_FIXED.unpack_from(payload, body)
                first = body + SPARSE_FIXED.size
                if first + nr_areas * SPARSE_AREA.size > len(payload):
                    raise _reject("sparse mmap areas truncated")
                areas = tuple(
                    SparseMmapArea(*SPARSE_AREA.unpack_from(payload, first + i * 16))
                    for i in range(nr_areas)
                )
            at = nxt
        return cls(argsz, flags, index, cap_offset, size, offset, areas)


@_layout(IO_FDS, "DEVICE_GET_REGION_IO_FDS")
@dataclass(frozen=True, slots=True)
class RegionIoFdsRequest(_FixedStruct):
    """DEVICE_GET_REGION_IO_FDS request (platpass answers ENOTSUP: no ioeventfds)."""

    COMMAND: ClassVar[Command] = Command.DEVICE_GET_REGION_IO_FDS
    argsz: int
    flags: int
    index: int
    count: int


@_layout(IRQ_INFO, "DEVICE_GET_IRQ_INFO")
@dataclass(frozen=True, slots=True)
class IrqInfo(_FixedStruct):
    """DEVICE_GET_IRQ_INFO request (argsz, index) and reply (flags, count)."""

    COMMAND: ClassVar[Command] = Command.DEVICE_GET_IRQ_INFO
    argsz: int
    flags: int
    index: int
    count: int


@_layout(IRQ_SET, "SET_IRQS")
@dataclass(frozen=True, slots=True)
class SetIrqs(_WithData):
    """DEVICE_SET_IRQS request (the reply has no payload).

    ``data`` is the bool array for DATA_BOOL (one byte per sub-index); eventfds travel as
    SCM_RIGHTS beside the message, not in ``data``. Exactly one DATA_* and one ACTION_*
    flag must be set, as VFIO requires.
    """

    COMMAND: ClassVar[Command] = Command.DEVICE_SET_IRQS
    argsz: int
    flags: IrqSetFlags
    index: int
    start: int
    count: int
    data: bytes = b""

    @property
    def bools(self) -> tuple[bool, ...]:
        return tuple(bool(b) for b in self.data)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> SetIrqs:
        if len(payload) < IRQ_SET.size:
            raise _reject(f"SET_IRQS payload needs 20 bytes, got {len(payload)}")
        argsz, flags, index, start, count = IRQ_SET.unpack_from(payload)
        if argsz < IRQ_SET.size or argsz > len(payload):
            raise _reject(f"SET_IRQS argsz {argsz} does not match payload {len(payload)}")
        data = bytes(payload[IRQ_SET.size:argsz])
        if len(payload) != argsz:
            raise _reject(f"SET_IRQS payload {len(payload)} bytes but argsz {argsz}")
        # int(): ~ on an IntFlag only inverts the known bits, hiding unknown ones.
        known = int(IrqSetFlags.data_mask() | IrqSetFlags.action_mask())
        if flags & ~known:
            raise _reject(f"SET_IRQS has unknown flags {flags:#x}")
        data_flags = flags & int(IrqSetFlags.data_mask())
        action_flags = flags & int(IrqSetFlags.action_mask())
        if data_flags.bit_count() != 1 or action_flags.bit_count() != 1:
            raise _reject(f"SET_IRQS needs one DATA_* and one ACTION_* flag, got {flags:#x}")
        if start + count > _U32:
            raise _reject("SET_IRQS start+count overflows")
        if data_flags == IrqSetFlags.DATA_BOOL:
            if len(data) != count:
                raise _reject(f"SET_IRQS DATA_BOOL needs {count} bytes, got {len(data)}")
        elif data_flags == IrqSetFlags.DATA_EVENTFD:
            # fds come as SCM_RIGHTS; tolerate a kernel-style s32 array, which is ignored.
            if data and len(data) != 4 * count:
                raise _reject("SET_IRQS DATA_EVENTFD carries unexpected data")
            data = b""
        elif data:
            raise _reject("SET_IRQS DATA_NONE carries data")
        return cls(argsz, IrqSetFlags(flags), index, start, count, data)


# --------------------------------------------------------------------------- region I/O


@dataclass(frozen=True, slots=True)
class _RegionAccess(_FixedStruct):
    """The access every REGION_READ/REGION_WRITE request and reply names (REGION_ACCESS),
    declared once; the subclasses add ``data`` where the message carries it."""

    offset: int
    region: int
    count: int


@_layout(REGION_ACCESS, "REGION_READ")
@dataclass(frozen=True, slots=True)
class RegionRead(_RegionAccess):
    """REGION_READ request."""

    COMMAND: ClassVar[Command] = Command.REGION_READ


@_layout(REGION_ACCESS, "REGION_READ reply")
@dataclass(frozen=True, slots=True)
class RegionReadReply(_RegionAccess, _WithData):
    """REGION_READ reply: the access echoed, then the data read."""

    COMMAND: ClassVar[Command] = Command.REGION_READ
    data: bytes


@_layout(REGION_ACCESS, "REGION_WRITE", "REGION_WRITE payload")
@dataclass(frozen=True, slots=True)
class RegionWrite(_RegionAccess, _WithData):
    """REGION_WRITE request: the access and its data."""

    COMMAND: ClassVar[Command] = Command.REGION_WRITE
    data: bytes


@_layout(REGION_ACCESS, "REGION_WRITE reply")
@dataclass(frozen=True, slots=True)
class RegionWriteReply(_RegionAccess):
    """REGION_WRITE reply: the access echoed, no data."""

    COMMAND: ClassVar[Command] = Command.REGION_WRITE


WRITE_MULTI_COUNT = struct.Struct("=Q")  # wr_cnt
WRITE_ONE = struct.Struct("=QII8s")  # offset region count data[8]
#: Most writes one REGION_WRITE_MULTI may carry (bounds the work of one message).
MAX_WRITE_MULTI = 1024


@dataclass(frozen=True, slots=True)
class SingleWrite:
    """One write of a REGION_WRITE_MULTI: at most 8 bytes."""

    offset: int
    region: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RegionWriteMulti:
    """REGION_WRITE_MULTI request: coalesced writes of at most 8 bytes each."""

    COMMAND: ClassVar[Command] = Command.REGION_WRITE_MULTI
    writes: tuple[SingleWrite, ...]

    def encode(self) -> bytes:
        parts = [WRITE_MULTI_COUNT.pack(len(self.writes))]
        for w in self.writes:
            if not 0 < w.count <= 8 or len(w.data) != w.count:
                raise LocalProtocolError(f"bad write in REGION_WRITE_MULTI: {w}")
            parts.append(WRITE_ONE.pack(w.offset, w.region, w.count, w.data.ljust(8, b"\0")))
        return b"".join(parts)

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> RegionWriteMulti:
        if len(payload) < WRITE_MULTI_COUNT.size:
            raise _reject("REGION_WRITE_MULTI payload shorter than 8 bytes")
        (count,) = WRITE_MULTI_COUNT.unpack_from(payload)
        if not 0 < count <= MAX_WRITE_MULTI:
            raise _reject(f"REGION_WRITE_MULTI wr_cnt {count} not in 1..{MAX_WRITE_MULTI}")
        _exact(payload, WRITE_MULTI_COUNT.size + count * WRITE_ONE.size, "REGION_WRITE_MULTI")
        writes = []
        for i in range(count):
            offset, region, size, data = WRITE_ONE.unpack_from(
                payload, WRITE_MULTI_COUNT.size + i * WRITE_ONE.size)
            if not 0 < size <= 8:
                raise _reject(f"REGION_WRITE_MULTI write {i} has count {size} (1..8)")
            writes.append(SingleWrite(offset, region, size, data[:size]))
        return cls(tuple(writes))


@_layout(WRITE_MULTI_COUNT, "REGION_WRITE_MULTI reply")
@dataclass(frozen=True, slots=True)
class RegionWriteMultiReply(_FixedStruct):
    """REGION_WRITE_MULTI reply: how many writes were completed."""

    COMMAND: ClassVar[Command] = Command.REGION_WRITE_MULTI
    wr_cnt: int


@_layout(NO_PAYLOAD, "DEVICE_RESET")
@dataclass(frozen=True, slots=True)
class DeviceReset(_FixedStruct):
    """DEVICE_RESET request and reply: no payload."""

    COMMAND: ClassVar[Command] = Command.DEVICE_RESET


@_layout(NO_PAYLOAD, "empty reply")
@dataclass(frozen=True, slots=True)
class Empty(_FixedStruct):
    """A reply without payload (DMA_MAP, SET_IRQS)."""


Request = (
    Version | DmaMap | DmaUnmap | DeviceInfo | RegionInfoRequest | RegionIoFdsRequest
    | IrqInfo | SetIrqs | RegionRead | RegionWrite | DeviceReset | RegionWriteMulti
)

#: How the server decodes each client->server command it understands.
REQUEST_DECODERS: dict[int, Callable[[bytes | memoryview], Request]] = {
    Command.VERSION: Version.decode,
    Command.DMA_MAP: DmaMap.decode,
    Command.DMA_UNMAP: DmaUnmap.decode,
    Command.DEVICE_GET_INFO: DeviceInfo.decode,
    Command.DEVICE_GET_REGION_INFO: RegionInfoRequest.decode,
    Command.DEVICE_GET_REGION_IO_FDS: RegionIoFdsRequest.decode,
    Command.DEVICE_GET_IRQ_INFO: IrqInfo.decode,
    Command.DEVICE_SET_IRQS: SetIrqs.decode,
    Command.REGION_READ: RegionRead.decode,
    Command.REGION_WRITE: RegionWrite.decode,
    Command.DEVICE_RESET: DeviceReset.decode,
    Command.REGION_WRITE_MULTI: RegionWriteMulti.decode,
}

#: How the client decodes each reply.
REPLY_DECODERS: dict[int, Any] = {
    Command.VERSION: Version.decode,
    Command.DMA_MAP: Empty.decode,
    Command.DMA_UNMAP: DmaUnmap.decode,
    Command.DEVICE_GET_INFO: DeviceInfo.decode,
    Command.DEVICE_GET_REGION_INFO: RegionInfo.decode,
    Command.DEVICE_GET_IRQ_INFO: IrqInfo.decode,
    Command.DEVICE_SET_IRQS: Empty.decode,
    Command.REGION_READ: RegionReadReply.decode,
    Command.REGION_WRITE: RegionWriteReply.decode,
    Command.DEVICE_RESET: DeviceReset.decode,
    Command.REGION_WRITE_MULTI: RegionWriteMultiReply.decode,
}


def decode_request(command: int, payload: bytes | memoryview) -> Request:
    """Decode a command's payload. Raises RemoteProtocolError: ENOSYS for a command
    number the protocol does not define, EINVAL for a malformed payload."""
    decoder = REQUEST_DECODERS.get(command)
    if decoder is None:
        raise RemoteProtocolError(errno.ENOSYS, f"no decoder for command {command}")
    return decoder(payload)


def decode_reply(command: int, payload: bytes | memoryview) -> Any:
    """Decode a reply payload for ``command`` (client side)."""
    decoder = REPLY_DECODERS.get(command)
    if decoder is None:
        raise RemoteProtocolError(errno.ENOSYS, f"no reply decoder for command {command}")
    return decoder(payload)
