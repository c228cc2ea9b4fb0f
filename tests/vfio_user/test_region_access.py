"""The codec's REGION_READ/WRITE fast path against the full codec: the same bytes both ways.

Packing: every message the fast path builds is byte for byte what Header + the message
classes encode. Parsing: a message the fast path accepts decodes through the full codec to
the same fields; one it declines is one the full codec must see (a split access, another
command, a flag, a size that disagrees, too few bytes).
"""

from __future__ import annotations

import errno

from hypothesis import example, given
from hypothesis import strategies as st

from platpass.vfio_user.protocol import (
    HEADER_SIZE,
    Command,
    Header,
    HeaderFlags,
    MessageType,
    RegionRead,
    RegionReadReply,
    RegionWrite,
    RegionWriteReply,
    decode_reply,
    decode_request,
    reply_header,
)
from platpass.vfio_user.protocol.region_access import (
    ACCESS_SIZE,
    ACCESS_SIZES,
    BUFFER_SIZE,
    answer_read,
    is_write_reply,
    pack_error_reply,
    pack_read,
    pack_read_reply,
    pack_write,
    pack_write_reply,
    parse_request,
    read_reply_value,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
sizes = st.sampled_from(ACCESS_SIZES)


@st.composite
def single_access(draw: st.DrawFn) -> tuple[int, int, int, int, int]:
    """(msg_id, region, offset, count, value) of one naturally aligned access."""
    count = draw(sizes)
    offset = draw(st.integers(0, (1 << 64) // count - 1)) * count
    return draw(u16), draw(u32), offset, count, draw(st.integers(0, (1 << (8 * count)) - 1))


def _command(command: Command, payload: bytes, msg_id: int, flags: int = 0) -> bytes:
    return Header(msg_id, command, HEADER_SIZE + len(payload), flags).encode() + payload


@given(single_access())
def test_packed_requests_are_the_full_codecs_bytes(access: tuple[int, ...]) -> None:
    msg_id, region, offset, count, value = access
    data = value.to_bytes(count, "little")
    buf = bytearray(BUFFER_SIZE)
    n = pack_read(buf, msg_id, region, offset, count)
    assert bytes(buf[:n]) == _command(Command.REGION_READ,
                                      RegionRead(offset, region, count).encode(), msg_id)
    n = pack_write(buf, msg_id, region, offset, count, value)
    assert bytes(buf[:n]) == _command(Command.REGION_WRITE,
                                      RegionWrite(offset, region, count, data).encode(), msg_id)
    n = pack_write(buf, msg_id, region, offset, count, value, posted=True)
    assert bytes(buf[:n]) == _command(Command.REGION_WRITE,
                                      RegionWrite(offset, region, count, data).encode(), msg_id,
                                      HeaderFlags.NO_REPLY)


@given(single_access())
def test_packed_replies_are_the_full_codecs_bytes(access: tuple[int, ...]) -> None:
    msg_id, region, offset, count, value = access
    data = value.to_bytes(count, "little")
    buf = bytearray(BUFFER_SIZE)
    read = Header(msg_id, Command.REGION_READ, ACCESS_SIZE, MessageType.COMMAND)
    write = Header(msg_id, Command.REGION_WRITE, ACCESS_SIZE + count, MessageType.COMMAND)
    payload = RegionReadReply(offset, region, count, data).encode()
    n = pack_read_reply(buf, msg_id, region, offset, count, value)
    assert bytes(buf[:n]) == reply_header(read, len(payload)).encode() + payload
    payload = RegionWriteReply(offset, region, count).encode()
    n = pack_write_reply(buf, msg_id, region, offset, count)
    assert bytes(buf[:n]) == reply_header(write, len(payload)).encode() + payload
    n = pack_error_reply(buf, msg_id, Command.REGION_WRITE, errno.EIO)
    assert bytes(buf[:n]) == reply_header(write, 0, errno.EIO).encode()


@given(single_access(), st.booleans())
def test_client_parses_what_the_full_codec_decodes(access: tuple[int, ...],
                                                   write: bool) -> None:
    msg_id, region, offset, count, value = access
    data = value.to_bytes(count, "little")
    if write:
        request = Header(msg_id, Command.REGION_WRITE, ACCESS_SIZE + count, 0)
        payload = RegionWriteReply(offset, region, count).encode()
    else:
        request = Header(msg_id, Command.REGION_READ, ACCESS_SIZE, 0)
        payload = RegionReadReply(offset, region, count, data).encode()
    wire = reply_header(request, len(payload)).encode() + payload
    decoded = decode_reply(request.command, payload)
    if write:
        assert is_write_reply(wire, len(wire), msg_id)
        assert not is_write_reply(wire, len(wire), (msg_id + 1) & 0xFFFF)
    else:
        assert read_reply_value(wire, len(wire), msg_id, count) == \
            int.from_bytes(decoded.data, "little") == value
        assert read_reply_value(wire, len(wire), (msg_id + 1) & 0xFFFF, count) is None
        assert read_reply_value(wire, len(wire) - 1, msg_id, count) is None
    error = reply_header(request, 0, errno.EINVAL).encode()
    assert read_reply_value(error, len(error), msg_id, count) is None
    assert not is_write_reply(error, len(error), msg_id)


@given(single_access(), st.booleans(), st.booleans())
def test_server_parses_what_the_full_codec_decodes(access: tuple[int, ...], write: bool,
                                                   posted: bool) -> None:
    msg_id, region, offset, count, value = access
    data = value.to_bytes(count, "little")
    flags = HeaderFlags.NO_REPLY if posted else 0
    if write:
        wire = _command(Command.REGION_WRITE, RegionWrite(offset, region, count, data).encode(),
                        msg_id, flags)
    else:
        wire = _command(Command.REGION_READ, RegionRead(offset, region, count).encode(),
                        msg_id, flags)
    prefix = b"\xa5" * 7
    parsed = parse_request(prefix + wire + b"next", len(prefix), len(prefix) + len(wire))
    if posted and not write:
        assert parsed is None  # a posted read is the full codec's (it reads, then drops)
        return
    header = Header.decode(wire)
    request = decode_request(header.command, wire[HEADER_SIZE:])
    assert parsed == (header.msg_id, header.command, header.no_reply, request.region,
                      request.offset, request.count,
                      int.from_bytes(request.data, "little") if write else 0)
    # Cut anywhere: not a whole message, so not the fast path's.
    for end in range(len(prefix), len(prefix) + len(wire)):
        assert parse_request(prefix + wire, len(prefix), end) is None


@given(u16, st.sampled_from([Command.REGION_READ, Command.REGION_WRITE]), u32,
       st.one_of(st.integers(0, (1 << 61) - 1).map(lambda n: n * 8), u64),
       st.one_of(sizes, st.integers(0, 16)), st.one_of(st.just(0), st.integers(0, 0x3F)),
       st.booleans())
@example(7, Command.REGION_READ, 0, 0x48, 4, 0, True)
def test_answer_read_answers_exactly_the_reads_parse_request_accepts(
        msg_id: int, command: Command, region: int, offset: int, count: int, flags: int,
        readable: bool) -> None:
    """answer_read is parse_request's read case plus the reply: it answers a message
    only when parse_request would take it as a read (and the region is readable), with
    the full codec's reply bytes, and calls the device only then."""
    data = bytes(count) if command == Command.REGION_WRITE else b""
    wire = _command(command, RegionRead(offset, region, count).encode() + data, msg_id, flags)
    value = 0x0123_4567_89AB_CDEF & ((1 << (8 * count)) - 1) if count in ACCESS_SIZES else 0
    calls = []

    def read(r: int, o: int, c: int) -> int:
        calls.append((r, o, c))
        return value

    reply = bytearray(BUFFER_SIZE)
    regions = {region} if readable else {region + 1}
    prefix = b"\x5a" * 3
    length = answer_read(prefix + wire, len(prefix), len(prefix) + len(wire), reply, read,
                         regions)
    parsed = parse_request(wire, 0, len(wire))
    if not (readable and parsed is not None and parsed[1] == Command.REGION_READ):
        assert (length, calls) == (0, [])
        return
    assert calls == [(region, offset, count)]
    header = reply_header(Header.decode(wire), count + 16)
    full = header.encode() + RegionReadReply(offset, region, count,
                                             value.to_bytes(count, "little")).encode()
    assert bytes(reply[:length]) == full
    for end in range(len(prefix), len(prefix) + len(wire)):  # cut: never answered
        assert answer_read(prefix + wire, len(prefix), end, reply, read, regions) == 0
    assert len(calls) == 1


@given(u16, st.sampled_from([Command.REGION_READ, Command.REGION_WRITE]), u64,
       st.integers(0, 16), u32)
def test_server_declines_what_is_not_one_access(msg_id: int, command: Command, offset: int,
                                                count: int, flags: int) -> None:
    data = bytes(count) if command == Command.REGION_WRITE else b""
    payload = RegionRead(offset, 0, count).encode() + data
    wire = _command(command, payload, msg_id, flags & 0x3F)
    parsed = parse_request(wire, 0, len(wire))
    single = count in ACCESS_SIZES and offset % count == 0
    allowed_flags = (0, HeaderFlags.NO_REPLY) if command == Command.REGION_WRITE else (0,)
    assert (parsed is not None) == (single and flags & 0x3F in allowed_flags)


def test_server_declines_other_commands_and_disagreeing_sizes() -> None:
    write = _command(Command.REGION_WRITE, RegionWrite(8, 0, 4, b"abcd").encode(), 1)
    assert parse_request(write, 0, len(write)) is not None
    for command in (Command.DMA_MAP, Command.REGION_WRITE_MULTI, Command.DEVICE_RESET):
        other = bytearray(write)
        other[2:4] = int(command).to_bytes(2, "little")
        assert parse_request(other, 0, len(other)) is None
    longer = bytearray(write + b"\0")
    longer[4:8] = (len(write) + 1).to_bytes(4, "little")  # size says 5 data bytes, count 4
    assert parse_request(longer, 0, len(longer)) is None
    read = _command(Command.REGION_READ, RegionRead(8, 0, 4).encode() + b"x", 1)
    assert parse_request(read, 0, len(read)) is None  # a read carries no data


@given(u16, u32, u64, st.integers(1, 8), st.booleans(), st.data())
def test_any_short_write_packs_as_the_full_codec(msg_id: int, region: int, offset: int,
                                                 count: int, posted: bool,
                                                 data: st.DataObject) -> None:
    value = data.draw(st.integers(0, (1 << (8 * count)) - 1))
    buf = bytearray(BUFFER_SIZE)
    n = pack_write(buf, msg_id, region, offset, count, value, posted=posted)
    payload = RegionWrite(offset, region, count, value.to_bytes(count, "little")).encode()
    assert bytes(buf[:n]) == _command(Command.REGION_WRITE, payload, msg_id,
                                      HeaderFlags.NO_REPLY if posted else 0)
    reply = Header(msg_id, Command.REGION_READ, ACCESS_SIZE + count, MessageType.REPLY)
    wire = reply.encode() + RegionReadReply(offset, region, count,
                                            value.to_bytes(count, "little")).encode()
    expected = value if count in ACCESS_SIZES else None  # others: the full codec's
    assert read_reply_value(wire, len(wire), msg_id, count) == expected
