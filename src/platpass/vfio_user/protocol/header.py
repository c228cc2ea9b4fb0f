"""The 16-byte vfio-user message header and the command numbers.

Layout (host byte order, as the specification says)::

    0  u16 message id     echoed in the reply
    2  u16 command
    4  u32 message size   whole message, header included
    8  u32 flags          bits 0-3 type (0 command, 1 reply), bit 4 no_reply, bit 5 error
    12 u32 error          errno of a failed command (valid in replies with the error bit)
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from platpass.errors import LocalProtocolError, RemoteProtocolError

#: Precompiled once: the header is packed/unpacked on every message.
HEADER = struct.Struct("=HHIII")
HEADER_SIZE = HEADER.size
#: Largest value of the u32 size field.
MAX_WIRE_SIZE = 0xFFFF_FFFF

#: Protocol version this implementation speaks (the one libvfio-user and QEMU use).
VERSION_MAJOR = 0
VERSION_MINOR = 1


class Command(IntEnum):
    """Command numbers from the specification's command table."""

    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


class MessageType(IntEnum):
    """The type field (flags bits 0-3); other values are invalid."""

    COMMAND = 0
    REPLY = 1


class HeaderFlags(IntFlag):
    """Flag bits above the type field."""

    NO_REPLY = 1 << 4
    ERROR = 1 << 5


TYPE_MASK = 0xF
#: Bits the specification does not define; a sender must leave them zero.
RESERVED_FLAGS = 0xFFFF_FFFF & ~(TYPE_MASK | HeaderFlags.NO_REPLY | HeaderFlags.ERROR)


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded header. ``size`` includes the header itself."""

    msg_id: int
    command: int
    size: int
    flags: int
    error: int = 0

    @property
    def type(self) -> int:
        """Raw type bits (compare with :class:`MessageType`)."""
        return self.flags & TYPE_MASK

    @property
    def is_command(self) -> bool:
        return self.flags & TYPE_MASK == MessageType.COMMAND

    @property
    def is_reply(self) -> bool:
        return self.flags & TYPE_MASK == MessageType.REPLY

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & HeaderFlags.NO_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & HeaderFlags.ERROR)

    def encode(self) -> bytes:
        """The 16 header bytes. Raises LocalProtocolError if a field does not fit."""
        if not (0 <= self.msg_id <= 0xFFFF and 0 <= self.command <= 0xFFFF):
            raise LocalProtocolError(f"message id/command out of range: {self}")
        if not (HEADER_SIZE <= self.size <= MAX_WIRE_SIZE):
            raise LocalProtocolError(f"message size {self.size} out of range")
        if not (0 <= self.flags <= 0xFFFF_FFFF and 0 <= self.error <= 0xFFFF_FFFF):
            raise LocalProtocolError(f"flags/error out of range: {self}")
        return HEADER.pack(self.msg_id, self.command, self.size, self.flags, self.error)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Header:
        """Decode the first 16 bytes of ``data``.

        Raises RemoteProtocolError(EINVAL) if fewer than 16 bytes are given or the size
        field is smaller than a header (the stream cannot be resynchronised after that).
        """
        if len(data) < HEADER_SIZE:
            raise RemoteProtocolError(errno.EINVAL, f"header needs 16 bytes, got {len(data)}")
        header = cls(*HEADER.unpack_from(data))
        if header.size < HEADER_SIZE:
            raise RemoteProtocolError(
                errno.EINVAL, f"message size {header.size} is smaller than the header"
            )
        return header


def reply_header(request: Header, payload_size: int, error: int = 0) -> Header:
    """Header of the reply to ``request``: same id and command, REPLY type, error bit if
    ``error`` is non-zero (an error reply carries no payload, per the specification)."""
    if error:
        if payload_size:
            raise LocalProtocolError("an error reply must carry only the header")
        return Header(request.msg_id, request.command, HEADER_SIZE,
                      MessageType.REPLY | HeaderFlags.ERROR, error)
    return Header(request.msg_id, request.command, HEADER_SIZE + payload_size,
                  MessageType.REPLY, 0)
