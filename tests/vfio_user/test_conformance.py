"""Raw-protocol checks against ``platpass serve``, written from the specification's tables
with their own ``struct`` layouts (not the project's codec), so that a layout mistake
shared by our encoder and decoder cannot hide. Each check names the spec section."""

from __future__ import annotations

import errno
import json
import mmap
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from platpass.host.simulated.board import board_dts_path

from .test_end_to_end import SOC, Server

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")

HDR = struct.Struct("<HHIII")  # Header: id, command, size, flags, error


class Raw:
    """A bare socket speaking bytes."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.next_id = 100
        self.pending = b""

    def call(self, command: int, payload: bytes = b"", fds: tuple[int, ...] = (),
             flags: int = 0) -> tuple[tuple[int, int, int, int, int], bytes, list[int]]:
        self.next_id += 1
        data = HDR.pack(self.next_id, command, 16 + len(payload), flags, 0) + payload
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                        struct.pack(f"{len(fds)}i", *fds))])
        else:
            self.sock.sendall(data)
        return self.receive(self.next_id, command)

    def receive(self, msg_id: int, command: int
                ) -> tuple[tuple[int, int, int, int, int], bytes, list[int]]:
        got = self.pending
        fds: list[int] = []
        while len(got) < 16 or len(got) < HDR.unpack_from(got)[2]:
            data, anc, _f, _a = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            assert data, "server closed the connection"
            got += data
            for _level, _kind, raw in anc:
                fds += struct.unpack(f"{len(raw) // 4}i", raw)
        header = HDR.unpack_from(got)
        assert header[0] == msg_id and header[1] == command  # id and command echoed
        self.pending = got[header[2]:]
        return header, got[16:header[2]], fds

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The sim board with the PL011 given a two-page window (its FIFO page trapped, the
    second page mappable); the PL031 as the board describes it (one page, mapped whole)."""
    where = tmp_path_factory.mktemp("conf")
    dts = where / "board.dts"
    dts.write_text(board_dts_path().read_text().replace(
        "reg = <0x0 0x1000>;", "reg = <0x0 0x2000>;"))
    sockets = where / "s"
    server = Server("--dts", str(dts), "--backend", "sim", "--socket-dir", str(sockets),
                    f"{SOC}/rtc@20000", f"{SOC}/serial@0")
    yield sockets
    assert server.stop() == 0


def negotiated_raw(path: Path) -> Raw:
    raw = Raw(path)
    caps = json.dumps({"capabilities": {"max_msg_fds": 4, "max_data_xfer_size": 65536}})
    header, payload, _ = raw.call(1, struct.pack("<HH", 0, 1) + caps.encode() + b"\0")
    assert header[3] == 1  # Type = Reply, no error
    raw.version_reply = payload  # type: ignore[attr-defined]
    return raw


@pytest.fixture
def rtc(served: Path) -> Iterator[Raw]:
    raw = negotiated_raw(served / "rtc@20000.sock")
    yield raw
    raw.close()


@pytest.fixture
def uart(served: Path) -> Iterator[Raw]:
    raw = negotiated_raw(served / "serial@0.sock")
    yield raw
    raw.close()


def test_version_reply_format(rtc: Raw) -> None:
    """VFIO_USER_VERSION: same format as the request; major equal, minor <= proposed;
    NUL-terminated JSON whose capabilities are a subset of those proposed."""
    payload: bytes = rtc.version_reply  # type: ignore[attr-defined]
    major, minor = struct.unpack_from("<HH", payload)
    assert major == 0 and minor <= 1
    assert payload.endswith(b"\0")
    caps = json.loads(payload[4:-1])["capabilities"]
    assert set(caps) <= {"max_msg_fds", "max_data_xfer_size"}
    assert all(isinstance(v, int) and v > 0 for v in caps.values())


def test_device_get_info_layout(rtc: Raw) -> None:
    """DEVICE_GET_INFO reply: argsz 16, flags, num_regions, num_irqs."""
    _header, payload, _ = rtc.call(4, struct.pack("<IIII", 16, 0, 0, 0))
    argsz, flags, regions, irqs = struct.unpack("<IIII", payload)
    assert (argsz, regions, irqs) == (16, 1, 1)
    assert flags & 1  # VFIO_DEVICE_FLAGS_RESET


def test_region_info_with_sparse_mmap_capability(uart: Raw) -> None:
    """GET_REGION_INFO: argsz is the full size; cap_offset relative to the start of the
    region info; sparse mmap cap (id 1, version 1); the fd comes with MMAP."""
    _h, small, fds = uart.call(5, struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0))
    argsz = struct.unpack_from("<I", small)[0]
    assert len(small) == 32 and argsz > 32
    for fd in fds:
        os.close(fd)
    _h, full, fds = uart.call(5, struct.pack("<IIIIQQ", argsz, 0, 0, 0, 0, 0))
    assert len(full) == argsz
    _argsz, flags, index, cap_offset, size, offset = struct.unpack_from("<IIIIQQ", full)
    assert index == 0 and size == 0x2000
    assert flags & 0b1111 == 0b1111  # READ | WRITE | MMAP | CAPS
    cap_id, version, nxt = struct.unpack_from("<HHI", full, cap_offset)
    assert (cap_id, version, nxt) == (1, 1, 0)
    nr_areas, _reserved = struct.unpack_from("<II", full, cap_offset + 8)
    areas = [struct.unpack_from("<QQ", full, cap_offset + 16 + 16 * i)
             for i in range(nr_areas)]
    assert areas == [(0x1000, 0x1000)]
    assert len(fds) == 1
    mapping = mmap.mmap(fds[0], 0x1000, offset=offset + areas[0][0])
    mapping.close()
    os.close(fds[0])


def test_region_info_of_a_wholly_mappable_region(rtc: Raw) -> None:
    """The board's PL031: MMAP without CAPS (no capability chain, cap_offset 0), argsz 32,
    and the fd of the whole region comes with the reply."""
    _h, full, fds = rtc.call(5, struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0))
    argsz, flags, index, cap_offset, size, offset = struct.unpack_from("<IIIIQQ", full)
    assert (argsz, index, cap_offset, size) == (32, 0, 0, 0x1000)
    assert flags & 0b1111 == 0b0111  # READ | WRITE | MMAP, no CAPS
    assert len(fds) == 1
    with mmap.mmap(fds[0], 0x1000, offset=offset) as mapping:
        assert struct.unpack_from("<I", mapping, 0xFE0)[0] == 0x31  # PL031 PeriphID0
    os.close(fds[0])


def test_irq_info_and_set_irqs_layout(rtc: Raw) -> None:
    """GET_IRQ_INFO reply: argsz, flags, index, count. SET_IRQS: argsz includes data."""
    _h, payload, _ = rtc.call(7, struct.pack("<IIII", 16, 0, 0, 0))
    assert struct.unpack("<IIII", payload) == (16, 0b111, 0, 1)  # EVENTFD|MASKABLE|AUTOMASKED
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        eventfd_trigger = struct.pack("<IIIII", 20, (1 << 2) | (1 << 5), 0, 0, 1)
        header, payload, _ = rtc.call(8, eventfd_trigger, (efd,))
        assert header[3] == 1 and payload == b""
        # DATA_BOOL | ACTION_TRIGGER with one true byte: loopback trigger.
        header, _p, _ = rtc.call(8, struct.pack("<IIIII", 21, (1 << 1) | (1 << 5), 0, 0, 1)
                                 + b"\1")
        assert header[3] == 1
        assert os.eventfd_read(efd) == 1
        rtc.call(8, struct.pack("<IIIII", 20, 1 | (1 << 5), 0, 0, 0))  # count 0: disable
    finally:
        os.close(efd)


def test_region_read_write_layout(rtc: Raw) -> None:
    """REGION_READ reply: offset, region, count, data. REGION_WRITE reply: no data."""
    _h, payload, _ = rtc.call(9, struct.pack("<QII", 0xFE0, 0, 4))
    assert struct.unpack_from("<QII", payload) == (0xFE0, 0, 4)
    assert payload[16:] == b"\x31\0\0\0"  # PL031 PeriphID0
    _h, payload, _ = rtc.call(10, struct.pack("<QII", 0x4, 0, 4) + b"\x78\x56\x34\x12")
    assert payload == struct.pack("<QII", 0x4, 0, 4)
    _h, payload, _ = rtc.call(9, struct.pack("<QII", 0x4, 0, 4))
    assert payload[16:] == b"\x78\x56\x34\x12"


def test_dma_map_unmap_layout_and_eexist(rtc: Raw) -> None:
    """DMA_MAP: 32-byte entry, no reply payload; overlap -> EEXIST. DMA_UNMAP reply echoes
    the entry."""
    entry = struct.pack("<IIQQQ", 32, 3, 0, 0x8000_0000, 0x4000)
    header, payload, _ = rtc.call(2, entry)
    assert header[3] == 1 and payload == b""
    header, _p, _ = rtc.call(2, entry)
    assert header[3] & (1 << 5) and header[4] == errno.EEXIST and header[2] == 16
    unmap = struct.pack("<IIQQ", 24, 0, 0x8000_0000, 0x4000)
    _h, payload, _ = rtc.call(3, unmap)
    assert payload == unmap


def test_errors_and_no_reply(rtc: Raw) -> None:
    """Error replies carry only the header, with the Error bit and an errno; a No_reply
    command gets no reply, so the next reply is for the next command."""
    header, payload, _ = rtc.call(9, struct.pack("<QII", 0x4000, 0, 4))
    assert header[3] == 1 | (1 << 5) and header[4] == errno.EINVAL and payload == b""
    header, _p, _ = rtc.call(4242)
    assert header[3] & (1 << 5) and header[4] != 0
    rtc.sock.sendall(HDR.pack(7, 13, 16, 1 << 4, 0))  # DEVICE_RESET, No_reply
    header, _p, _ = rtc.call(4, struct.pack("<IIII", 16, 0, 0, 0))
    assert header[3] == 1


def test_pipelined_commands_are_answered_in_order(rtc: Raw) -> None:
    """Command Concurrency: commands may be pipelined; processed in order."""
    batch = b"".join(HDR.pack(200 + i, 9, 32, 0, 0)
                     + struct.pack("<QII", 0xFE0 + 4 * i, 0, 4) for i in range(4))
    rtc.sock.sendall(batch)
    ids = [0x31, 0x10, 0x14, 0x00]
    for i in range(4):
        _h, payload, _ = rtc.receive(200 + i, 9)
        assert payload[16] == ids[i]


def test_commands_before_version_are_refused(served: Path) -> None:
    raw = Raw(served / "serial@0.sock")
    try:
        header, _p, _ = raw.call(4, struct.pack("<IIII", 16, 0, 0, 0))
        assert header[3] & (1 << 5) and header[4] == errno.EINVAL
    finally:
        raw.close()
