"""Codec round trips and rejections for every vfio-user message, and stream framing."""

from __future__ import annotations

import errno
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.errors import LocalProtocolError, RemoteProtocolError
from platpass.vfio_device.uapi import DmaMapFlags, IrqSetFlags, RegionFlags
from platpass.vfio_user.protocol import (
    HEADER_SIZE,
    NEED_DATA,
    Command,
    Connection,
    ConnectionClosed,
    DeviceInfo,
    DeviceReset,
    DmaMap,
    DmaRead,
    DmaUnmap,
    DmaWrite,
    Header,
    HeaderFlags,
    IrqInfo,
    Message,
    MessageType,
    RegionInfo,
    RegionInfoRequest,
    RegionIoFdsRequest,
    RegionRead,
    RegionReadReply,
    RegionWrite,
    RegionWriteMulti,
    RegionWriteMultiReply,
    RegionWriteReply,
    Rejected,
    SetIrqs,
    SingleWrite,
    SparseMmapArea,
    State,
    Version,
    decode_request,
    reply_header,
)

ROUND_TRIP = [
    Version(0, 1, {"max_msg_fds": 8, "max_data_xfer_size": 4096}),
    Version(0, 1, {}, has_json=False),
    DmaMap(32, DmaMapFlags.READ | DmaMapFlags.WRITE, 0x1000, 0x4000_0000, 0x10000),
    DmaUnmap(24, 0, 0x4000_0000, 0x10000),
    DmaUnmap(24, 2, 0, 0),
    DeviceInfo(16, 0x5, 1, 1),
    RegionInfoRequest(32, 3),
    RegionInfo(32, RegionFlags.READ | RegionFlags.WRITE, 0, 0, 0x1000, 0),
    RegionInfo(80, 0xF, 1, 32, 0x2000, 0x10000,
               (SparseMmapArea(0x1000, 0x1000), SparseMmapArea(0, 0))),
    RegionIoFdsRequest(32, 0, 0, 0),
    IrqInfo(16, 0x7, 0, 1),
    SetIrqs(20, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 0, 1),
    SetIrqs(21, IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_MASK, 0, 0, 1, b"\x01"),
    SetIrqs(20, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 0, 0, 1),
    RegionRead(0x18, 0, 4),
    RegionReadReply(0x18, 0, 4, b"\x01\x02\x03\x04"),
    RegionWrite(0x0, 0, 2, b"\xaa\xbb"),
    RegionWriteReply(0x0, 0, 2),
    RegionWriteMulti((SingleWrite(0x10, 0, 4, b"\x01\x02\x03\x04"),
                      SingleWrite(0x0, 1, 8, bytes(range(8))))),
    RegionWriteMultiReply(2),
    DmaRead(0x1000, 8),
    DmaWrite(0x1000, 2, b"hi"),
    DeviceReset(),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    encoded = message.encode()  # type: ignore[attr-defined]
    assert type(message).decode(encoded) == message  # type: ignore[attr-defined]


def test_version_json_is_nul_terminated_and_parsed() -> None:
    payload = Version(0, 1, {"max_msg_fds": 4}).encode()
    assert payload[:4] == b"\x00\x00\x01\x00"
    assert payload.endswith(b"}\x00")
    assert Version.decode(payload).capabilities == {"max_msg_fds": 4}


def test_version_with_an_empty_json_string_has_no_capabilities() -> None:
    assert Version.decode(b"\0\0\1\0\0") == Version(0, 1, {})


def test_region_info_layout_matches_vfio() -> None:
    info = RegionInfo(80, 0xF, 1, 32, 0x2000, 0x10000, (SparseMmapArea(0x1000, 0x1000),))
    raw = info.encode()
    assert len(raw) == 32 + 8 + 8 + 16
    # cap header: id 1 (SPARSE_MMAP), version 1, next 0; then nr_areas 1, reserved 0
    assert raw[32:40] == bytes([1, 0, 1, 0, 0, 0, 0, 0])
    assert raw[40:48] == bytes([1, 0, 0, 0, 0, 0, 0, 0])


REJECTIONS = [
    (Command.VERSION, b"\x00", "VERSION payload needs 4 bytes"),
    (Command.VERSION, b"\x00\x00\x01\x00{}", "not NUL-terminated"),
    (Command.VERSION, b"\x00\x00\x01\x00{\x00", "not UTF-8 JSON"),
    (Command.VERSION, b"\x00\x00\x01\x00[]\x00", "not a JSON object"),
    (Command.VERSION, b'\x00\x00\x01\x00{"capabilities":1}\x00', "not a JSON object"),
    (Command.VERSION, b'\x00\x00\x01\x00{"capabilities":{"max_msg_fds":-1}}\x00',
     "non-negative integer"),
    (Command.VERSION, b'\x00\x00\x01\x00{"capabilities":{"max_msg_fds":true}}\x00',
     "non-negative integer"),
    (Command.VERSION, b'\x00\x00\x01\x00{"capabilities":{"twin_socket":1}}\x00',
     "JSON dict"),
    (Command.DMA_MAP, bytes(31), "must be 32 bytes"),
    (Command.DMA_MAP, DmaMap(16, DmaMapFlags.READ, 0, 0, 4096).encode(), "argsz 16"),
    (Command.DMA_MAP, DmaMap(32, DmaMapFlags(4), 0, 0, 4096).encode(), "unknown flags"),
    (Command.DMA_MAP, DmaMap(32, DmaMapFlags.READ, 0, 0, 0).encode(), "is invalid"),
    (Command.DMA_MAP, DmaMap(32, DmaMapFlags.READ, 0, 2**64 - 1, 2).encode(), "is invalid"),
    (Command.DMA_UNMAP, bytes(20), "must be 24 bytes"),
    (Command.DMA_UNMAP, DmaUnmap(24, 1, 0, 4096).encode(), "unsupported flags"),
    (Command.DMA_UNMAP, DmaUnmap(24, 2, 0, 4096).encode(), "FLAG_ALL"),
    (Command.DMA_UNMAP, DmaUnmap(24, 0, 0, 0).encode(), "empty range"),
    (Command.DEVICE_GET_INFO, bytes(12), "must be 16 bytes"),
    (Command.DEVICE_GET_REGION_INFO, bytes(16), "must be 32 bytes"),
    (Command.DEVICE_GET_REGION_IO_FDS, bytes(8), "must be 16 bytes"),
    (Command.DEVICE_GET_IRQ_INFO, bytes(17), "must be 16 bytes"),
    (Command.DEVICE_SET_IRQS, bytes(19), "needs 20 bytes"),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(24, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, 0, 0, 1).encode(),
     "does not match payload"),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(20, IrqSetFlags.DATA_NONE | IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_MASK,
             0, 0, 1).encode(), "one DATA_* and one ACTION_*"),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(20, IrqSetFlags.DATA_NONE, 0, 0, 1).encode(), "one DATA_* and one ACTION_*"),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(20, IrqSetFlags(1 << 6) | IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK,
             0, 0, 1).encode(), "unknown flags"),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(20, IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_MASK, 0, 0, 1).encode(),
     "DATA_BOOL needs 1 bytes"),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(21, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, 0, 0, 1, b"\x01").encode(),
     "DATA_NONE carries data"),
    (Command.DEVICE_SET_IRQS,
     SetIrqs(20, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, 0, 2**32 - 1, 2).encode(),
     "overflows"),
    (Command.REGION_READ, bytes(15), "must be 16 bytes"),
    (Command.REGION_READ, bytes(20), "must be 16 bytes"),
    (Command.REGION_WRITE, bytes(8), "shorter than 16"),
    (Command.REGION_WRITE, RegionRead(0, 0, 4).encode() + b"\x01", "count 4 but 1"),
    (Command.DEVICE_RESET, b"\x00", "must be 0 bytes"),
    (Command.REGION_WRITE_MULTI, bytes(4), "shorter than 8"),
    (Command.REGION_WRITE_MULTI, bytes(8), "wr_cnt 0"),
    (Command.REGION_WRITE_MULTI, (1).to_bytes(8, "little") + bytes(20), "must be 32 bytes"),
    (Command.REGION_WRITE_MULTI, (1).to_bytes(8, "little") + bytes(12)
     + (9).to_bytes(4, "little") + bytes(8), "count 9"),
]


@pytest.mark.parametrize(("command", "payload", "reason"), REJECTIONS,
                         ids=[f"{c.name}-{i}" for i, (c, _p, _r) in enumerate(REJECTIONS)])
def test_rejection(command: Command, payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_request(command, payload)
    assert info.value.errno == errno.EINVAL
    assert reason in info.value.message


def test_unknown_command_is_enosys() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_request(99, b"")
    assert info.value.errno == errno.ENOSYS


def test_region_info_capability_chain_loops_are_rejected() -> None:
    raw = bytearray(RegionInfo(48, 0xF, 0, 32, 0x1000, 0, ()).encode())
    raw[36:40] = (32).to_bytes(4, "little")  # next points at itself
    with pytest.raises(RemoteProtocolError, match="chain is broken"):
        RegionInfo.decode(bytes(raw))


def test_region_info_skips_unknown_capabilities() -> None:
    fixed = RegionInfo(0, 0xF, 0, 32, 0x1000, 0).encode()
    unknown = (2).to_bytes(2, "little") + (1).to_bytes(2, "little") + (48).to_bytes(4, "little")
    unknown += bytes(8)
    sparse = RegionInfo(0, 0, 0, 0, 0, 0, (SparseMmapArea(0, 0x1000),)).encode()[32:]
    info = RegionInfo.decode(fixed + unknown + sparse)
    assert info.sparse_areas == (SparseMmapArea(0, 0x1000),)


def test_header_codec_and_reply_rules() -> None:
    header = Header(7, Command.REGION_READ, 32, MessageType.COMMAND | HeaderFlags.NO_REPLY)
    decoded = Header.decode(header.encode())
    assert decoded == header and decoded.no_reply and decoded.is_command
    reply = reply_header(header, 20)
    assert (reply.msg_id, reply.command, reply.size, reply.is_reply) == (7, 9, 36, True)
    err = reply_header(header, 0, errno.EINVAL)
    assert err.is_error and err.error == errno.EINVAL and err.size == HEADER_SIZE
    with pytest.raises(LocalProtocolError):
        reply_header(header, 4, errno.EINVAL)
    with pytest.raises(LocalProtocolError):
        Header(70000, 1, 16, 0).encode()
    with pytest.raises(RemoteProtocolError) as info:
        Header.decode(Header(1, 1, 16, 0).encode()[:15])
    assert info.value.errno == errno.EINVAL


# ----------------------------------------------------------------------- framing


def _wire(msg_id: int, command: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return Header(msg_id, command, HEADER_SIZE + len(payload), flags).encode() + payload


def _events(conn: Connection) -> list[object]:
    out = []
    while (event := conn.next_event()) is not NEED_DATA:
        out.append(event)
        if isinstance(event, ConnectionClosed):
            break
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20))
def test_framing_survives_any_chunking(cuts: list[int]) -> None:
    stream = b"".join(_wire(i, Command.REGION_READ, RegionRead(i, 0, 4).encode())
                      for i in range(5))
    conn = Connection()
    got: list[object] = []
    position = 0
    for cut in [*cuts, len(stream)]:
        conn.receive_data(stream[position:position + cut])
        position += cut
        got += _events(conn)
        if position >= len(stream):
            break
    assert [m.header.msg_id for m in got if isinstance(m, Message)] == list(range(5))


def _pipe_fds(n: int) -> list[int]:
    fds = []
    for _ in range(n):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    return fds


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_fds_belong_to_the_message_starting_in_their_chunk() -> None:
    first = _wire(1, Command.DEVICE_RESET)
    second = _wire(2, Command.DEVICE_SET_IRQS, bytes(20))
    conn = Connection()
    fds = _pipe_fds(1)
    # The tail of message 1 arrives together with message 2 and message 2's fd.
    conn.receive_data(first[:10])
    conn.receive_data(first[10:] + second, fds)
    one, two = _events(conn)
    assert one.fds == () and two.fds == tuple(fds)
    os.close(fds[0])


def test_fds_arriving_mid_message_belong_to_it() -> None:
    msg = _wire(1, Command.DEVICE_SET_IRQS, bytes(20))
    conn = Connection()
    fds = _pipe_fds(1)
    conn.receive_data(msg[:5])
    conn.receive_data(msg[5:20], fds)
    conn.receive_data(msg[20:])
    (event,) = _events(conn)
    assert event.fds == tuple(fds)
    os.close(fds[0])


def test_too_many_fds_are_rejected_and_handed_over() -> None:
    conn = Connection(max_fds=1)
    fds = _pipe_fds(2)
    conn.receive_data(_wire(3, Command.DEVICE_SET_IRQS, bytes(20)), fds)
    (event,) = _events(conn)
    assert isinstance(event, Rejected) and event.errno == errno.EINVAL
    assert event.fds == tuple(fds)
    for fd in fds:
        os.close(fd)


def test_oversized_message_is_skipped_and_stream_stays_in_sync() -> None:
    conn = Connection(max_message_size=64)
    big = _wire(4, Command.REGION_WRITE, RegionRead(0, 0, 100).encode() + bytes(100))
    fds = _pipe_fds(1)
    conn.receive_data(big[:16], fds)
    (rejected,) = _events(conn)  # answered on the header alone
    assert isinstance(rejected, Rejected) and rejected.errno == errno.E2BIG
    assert rejected.header.msg_id == 4 and rejected.fds == tuple(fds)
    stray = _pipe_fds(1)
    conn.receive_data(big[16:40], stray)  # fds inside the skipped body have no owner
    assert _events(conn) == []
    conn.receive_data(big[40:] + _wire(5, Command.DEVICE_RESET))
    (after,) = _events(conn)
    assert isinstance(after, Message) and after.header.msg_id == 5 and after.fds == ()
    assert not _is_open(stray[0])
    os.close(fds[0])


def test_size_below_header_is_unrecoverable() -> None:
    conn = Connection()
    fds = _pipe_fds(1)
    conn.receive_data(Header(1, 1, 16, 0).encode()[:4] + (8).to_bytes(4, "little") + bytes(8),
                      fds)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.errno == errno.EINVAL
    assert conn.state is State.ERROR
    assert not _is_open(fds[0])  # fds of a dead stream are closed, never leaked
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(LocalProtocolError):
        conn.send_message(Header(1, 1, 16, 1))


def test_eof_reports_partial_message_and_closes_its_fds() -> None:
    conn = Connection()
    fds = _pipe_fds(1)
    conn.receive_data(_wire(1, Command.DEVICE_SET_IRQS, bytes(20))[:25], fds)
    conn.receive_data(b"")
    assert _events(conn) == [ConnectionClosed(partial=True)]
    assert not _is_open(fds[0])
    assert conn.state is State.CLOSED


def test_send_checks_size() -> None:
    conn = Connection()
    header = Header(1, Command.DEVICE_RESET, 16, 0)
    assert conn.send_message(header) == header.encode()
    with pytest.raises(LocalProtocolError):
        conn.send_message(header, b"x")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(set(Command))), st.binary(max_size=96))
def test_decoders_only_ever_raise_remote_protocol_errors(command: Command,
                                                         payload: bytes) -> None:
    try:
        decode_request(command, payload)
    except RemoteProtocolError as err:
        assert err.errno in (errno.EINVAL, errno.ENOSYS)


def test_deeply_nested_version_json_is_einval() -> None:
    payload = b"\0\0\1\0" + b"[" * 100_000 + b"]" * 100_000 + b"\0"
    with pytest.raises(RemoteProtocolError) as info:
        Version.decode(payload)
    assert info.value.errno == errno.EINVAL


def test_discard_closes_fds_not_yet_handed_out() -> None:
    conn = Connection()
    fds = _pipe_fds(1)
    conn.receive_data(_wire(1, Command.DEVICE_SET_IRQS, bytes(20))[:30], fds)
    assert conn.next_event() is NEED_DATA
    conn.discard()
    assert not _is_open(fds[0]) and conn.state is State.CLOSED
