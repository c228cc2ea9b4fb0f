"""The codec's fast path: REGION_READ / REGION_WRITE of one access, over caller buffers.

A trapped register costs one request and one reply, so both ends pack and parse these
messages with one precompiled layout (header + ``offset region count``) straight in
buffers they own, with no message objects. Nothing here is a second protocol: every byte
packed is the byte the full codec (:class:`~.header.Header` and
:class:`~.messages.RegionRead` and friends) produces, and a message is parsed here only
when the full codec would decode it to the same fields; anything else (a split access, an
unknown flag, a message not entirely in the buffer) is left to the full codec, which
answers it with its checks and errno. The tests hold the two to the same bytes.

One access: ``count`` is 1, 2, 4 or 8 (:data:`ACCESS_SIZES`) and ``offset`` a multiple of
it; the value travels little-endian, as the device sees it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Container

from platpass.vfio_device.uapi import ACCESS_SIZES
from platpass.vfio_user.protocol.header import HEADER_SIZE, Command, HeaderFlags, MessageType

#: Header then the access: msg_id command size flags error | offset region count.
ACCESS = struct.Struct("=HHIIIQII")
#: Bytes of a REGION_READ request, a REGION_WRITE reply, and what precedes any data.
ACCESS_SIZE = ACCESS.size
#: Room for the longest message of the fast path (a write or a read reply of 8 bytes).
BUFFER_SIZE = ACCESS_SIZE + max(ACCESS_SIZES)

#: count -> the layout of a message that carries one value of that width after the access
#: (a REGION_WRITE request, a REGION_READ reply): one pack/unpack, no bytes conversion.
_WITH_VALUE = {n: struct.Struct("=HHIIIQII" + {1: "B", 2: "H", 4: "I", 8: "Q"}[n])
               for n in ACCESS_SIZES}

_READ = int(Command.REGION_READ)
_WRITE = int(Command.REGION_WRITE)
_REPLY = int(MessageType.REPLY)
_POSTED = int(HeaderFlags.NO_REPLY)
_ERROR_REPLY = _REPLY | int(HeaderFlags.ERROR)
_SIZES = frozenset(ACCESS_SIZES)


def pack_read(buf: bytearray, msg_id: int, region: int, offset: int, count: int) -> int:
    """A REGION_READ request into ``buf``; returns its length."""
    ACCESS.pack_into(buf, 0, msg_id, _READ, ACCESS_SIZE, 0, 0, offset, region, count)
    return ACCESS_SIZE


def pack_write(buf: bytearray, msg_id: int, region: int, offset: int, count: int,
               value: int, *, posted: bool = False) -> int:
    """A REGION_WRITE request into ``buf`` (``posted``: with the no-reply flag); returns
    its length."""
    size = ACCESS_SIZE + count
    flags = _POSTED if posted else 0
    layout = _WITH_VALUE.get(count)
    if layout is None:  # not one access: the server splits it (still one message)
        ACCESS.pack_into(buf, 0, msg_id, _WRITE, size, flags, 0, offset, region, count)
        buf[ACCESS_SIZE:size] = value.to_bytes(count, "little")
    else:
        layout.pack_into(buf, 0, msg_id, _WRITE, size, flags, 0, offset, region, count, value)
    return size


def pack_read_reply(buf: bytearray, msg_id: int, region: int, offset: int, count: int,
                    value: int) -> int:
    """The successful reply to a REGION_READ into ``buf``; returns its length."""
    size = ACCESS_SIZE + count
    _WITH_VALUE[count].pack_into(buf, 0, msg_id, _READ, size, _REPLY, 0, offset, region,
                                 count, value)
    return size


def pack_write_reply(buf: bytearray, msg_id: int, region: int, offset: int,
                     count: int) -> int:
    """The successful reply to a REGION_WRITE into ``buf``; returns its length."""
    ACCESS.pack_into(buf, 0, msg_id, _WRITE, ACCESS_SIZE, _REPLY, 0, offset, region, count)
    return ACCESS_SIZE


def pack_error_reply(buf: bytearray, msg_id: int, command: int, err: int) -> int:
    """An error reply (header only, ``err`` non-zero) into ``buf``; returns its length."""
    ACCESS.pack_into(buf, 0, msg_id, command, HEADER_SIZE, _ERROR_REPLY, err, 0, 0, 0)
    return HEADER_SIZE


def parse_request(buf: bytearray | bytes, at: int, end: int
                  ) -> tuple[int, int, bool, int, int, int, int] | None:
    """The single access requested by the message at ``buf[at:end]``, as ``(msg_id,
    command, posted, region, offset, count, value)`` (``value`` 0 for a read).

    None when the message is not one the fast path answers: fewer bytes than the message,
    another command, flags other than none (or no-reply for a write), a count other than
    1/2/4/8 or an offset not aligned to it, or a size field that disagrees. The message
    then belongs to the full codec. Its length is ``ACCESS_SIZE`` for a read,
    ``ACCESS_SIZE + count`` for a write.
    """
    if end - at < ACCESS_SIZE:
        return None
    msg_id, command, size, flags, _err, offset, region, count = ACCESS.unpack_from(buf, at)
    if count not in _SIZES or offset % count:
        return None
    if command == _READ:
        if flags or size != ACCESS_SIZE:
            return None
        return msg_id, _READ, False, region, offset, count, 0
    if command != _WRITE or size != ACCESS_SIZE + count or (flags and flags != _POSTED):
        return None
    if end - at < size:
        return None
    return (msg_id, _WRITE, bool(flags), region, offset, count,
            _WITH_VALUE[count].unpack_from(buf, at)[8])


def answer_read(buf: bytearray | bytes, at: int, end: int, reply: bytearray,
                read: Callable[[int, int, int], int], readable: Container[int]) -> int:
    """Answer the message at ``buf[at:end]`` when it is a single-access REGION_READ of a
    region in ``readable``: ``read(region, offset, count)`` gives the value, the successful
    reply goes into ``reply``; returns the reply's length (the request's is
    ``ACCESS_SIZE``). Returns 0, calling nothing, for any other message (then
    :func:`parse_request` and the full codec take it).

    The server's hot path: a trapped register read is one call here, with the checks of
    :func:`parse_request` for a read. An exception from ``read`` propagates, and the
    request then counts as not answered.
    """
    if end - at < ACCESS_SIZE:
        return 0
    msg_id, command, size, flags, _err, offset, region, count = ACCESS.unpack_from(buf, at)
    if (command != _READ or flags or size != ACCESS_SIZE or region not in readable
            or count not in _SIZES or offset % count):
        return 0
    return pack_read_reply(reply, msg_id, region, offset, count, read(region, offset, count))


def read_reply_value(buf: bytearray | bytes, nbytes: int, msg_id: int, count: int
                     ) -> int | None:
    """The value in ``buf[:nbytes]`` when it is exactly the successful reply to REGION_READ
    ``msg_id`` of ``count`` bytes; None for anything else (the full codec takes over)."""
    layout = _WITH_VALUE.get(count)
    if layout is None or nbytes != ACCESS_SIZE + count:
        return None
    rid, command, size, flags, _e, _o, _r, rcount, value = layout.unpack_from(buf)
    if (rid != msg_id or command != _READ or flags != _REPLY or size != nbytes
            or rcount != count):
        return None
    read: int = value  # typed at no cost (struct gives Any)
    return read


def is_write_reply(buf: bytearray | bytes, nbytes: int, msg_id: int) -> bool:
    """True when ``buf[:nbytes]`` is exactly the successful reply to REGION_WRITE
    ``msg_id``."""
    if nbytes != ACCESS_SIZE:
        return False
    rid, command, size, flags, _e, _o, _r, _n = ACCESS.unpack_from(buf)
    answers: bool = (rid == msg_id and command == _WRITE and flags == _REPLY
                     and size == ACCESS_SIZE)
    return answers


__all__ = [
    "ACCESS",
    "ACCESS_SIZE",
    "ACCESS_SIZES",
    "BUFFER_SIZE",
    "answer_read",
    "is_write_reply",
    "pack_error_reply",
    "pack_read",
    "pack_read_reply",
    "pack_write",
    "pack_write_reply",
    "parse_request",
    "read_reply_value",
]
