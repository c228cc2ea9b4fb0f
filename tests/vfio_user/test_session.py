"""The server's request handling, message by message, against a real simulated device."""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Callable

import pytest

from platpass.firmware.model import MmioRange
from platpass.host.simulated.board import open_sim_backend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.iommu import EmulatedIommu
from platpass.vfio_device.uapi import DeviceFlags, IrqInfoFlags, IrqSetFlags, RegionFlags
from platpass.vfio_user.protocol import (
    HEADER_SIZE,
    Command,
    DeviceInfo,
    DmaMap,
    DmaUnmap,
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
    SetIrqs,
    SingleWrite,
    SparseMmapArea,
    Version,
)
from platpass.vfio_user.session import Limits, Reply, Session

from .conftest import board_node, driver_for

MAP_RW = DmaMap(32, 3, 0, 0x10_0000, 0x1000)  # type: ignore[arg-type]


def msg(command: int, payload: bytes = b"", fds: tuple[int, ...] = (), *, flags: int = 0,
        msg_id: int = 1) -> Message:
    return Message(Header(msg_id, command, HEADER_SIZE + len(payload), flags), payload, fds)


def ask(session: Session, command: int, payload: bytes = b"",
        fds: tuple[int, ...] = (), flags: int = 0) -> Reply:
    reply = session.handle(msg(command, payload, fds, flags=flags))
    assert reply is not None
    assert reply.header.is_reply and reply.header.command == command
    return reply


def refused(session: Session, command: int, payload: bytes = b"",
            fds: tuple[int, ...] = ()) -> int:
    reply = ask(session, command, payload, fds)
    assert reply.header.is_error and reply.payload == b"" and reply.fds == ()
    assert reply.header.size == HEADER_SIZE
    return reply.header.error


def negotiated(device: VfioDevice, **caps: int) -> Session:
    session = Session(device)
    reply = ask(session, Command.VERSION, Version(0, 1, dict(caps)).encode())
    assert not reply.header.is_error
    return session


def pipe_fd() -> int:
    r, w = os.pipe()
    os.close(w)
    return r


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def rtc(make_device: Callable[..., VfioDevice]) -> VfioDevice:
    return make_device("arm,pl031")


@pytest.fixture
def two_page_uart(reactor: EpollReactor) -> VfioDevice:
    """A PL011 whose region spans two pages: the first holds its FIFO registers (trapped),
    the second has no side effects and is mappable, so region info carries a sparse-mmap
    capability and an fd."""
    node = board_node("arm,pl011")
    node = dataclasses.replace(node, regions=(MmioRange(node.regions[0].address, 0x2000),))
    device = VfioDevice(node, driver_for(node), open_sim_backend(node, reactor), reactor,
                        EmulatedIommu())
    yield device
    device.close()


# ----------------------------------------------------------------- negotiation


def test_commands_before_version_are_einval_and_version_still_works(rtc: VfioDevice) -> None:
    session = Session(rtc)
    assert refused(session, Command.DEVICE_GET_INFO, DeviceInfo(16).encode()) == errno.EINVAL
    assert not session.negotiated
    ask(session, Command.VERSION, Version(0, 1, {}).encode())
    assert session.negotiated


def test_version_reply_is_a_subset_of_the_proposal(rtc: VfioDevice) -> None:
    session = Session(rtc, Limits(max_msg_fds=4, max_data_xfer_size=4096))
    proposal = {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "pgsizes": 4096,
                "twin_socket": {"supported": True}, "write_multiple": True,
                "migration": {"pgsize": 4096}}
    reply = ask(session, Command.VERSION, Version(0, 7, proposal).encode())
    version = Version.decode(reply.payload)
    assert (version.major, version.minor) == (0, 1)
    assert version.capabilities == {"max_msg_fds": 4, "max_data_xfer_size": 4096,
                                    "pgsizes": 4096, "write_multiple": True}
    assert reply.payload.endswith(b"\0")
    assert refused(session, Command.VERSION, Version(0, 1).encode()) == errno.EINVAL


def test_version_without_json_gets_empty_capabilities(rtc: VfioDevice) -> None:
    reply = ask(Session(rtc), Command.VERSION, Version(0, 0, has_json=False).encode())
    assert Version.decode(reply.payload) == Version(0, 0, {})


def test_unsupported_major_is_refused_and_closes(rtc: VfioDevice) -> None:
    session = Session(rtc)
    reply = ask(session, Command.VERSION, Version(1, 0).encode())
    assert reply.header.is_error and reply.header.error == errno.EINVAL and reply.close_after
    assert not session.negotiated


def test_malformed_version_is_einval(rtc: VfioDevice) -> None:
    session = Session(rtc)
    assert refused(session, Command.VERSION, b"\0\0\1\0{") == errno.EINVAL
    assert not session.negotiated


# ----------------------------------------------------------------- info


def test_device_info(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    info = DeviceInfo.decode(ask(session, Command.DEVICE_GET_INFO,
                                 DeviceInfo(100).encode()).payload)
    assert info == DeviceInfo(16, DeviceFlags.PLATFORM | DeviceFlags.RESET, 1, 1)
    assert refused(session, Command.DEVICE_GET_INFO, DeviceInfo(15).encode()) == errno.EINVAL


def test_region_info_trapped_region_has_no_fd(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    reply = ask(session, Command.DEVICE_GET_REGION_INFO, RegionInfoRequest(32, 0).encode())
    info = RegionInfo.decode(reply.payload)
    assert info.size == 0x1000 and info.flags & RegionFlags.READ and info.flags & \
        RegionFlags.WRITE
    if not info.flags & RegionFlags.MMAP:
        assert reply.fds == ()
    assert refused(session, Command.DEVICE_GET_REGION_INFO,
                   RegionInfoRequest(32, 1).encode()) == errno.EINVAL
    assert refused(session, Command.DEVICE_GET_REGION_INFO,
                   RegionInfoRequest(31, 0).encode()) == errno.EINVAL


def test_region_info_sparse_mmap_and_argsz_retry(two_page_uart: VfioDevice) -> None:
    session = negotiated(two_page_uart)
    source = two_page_uart.region_info(0).map_source
    assert source is not None
    small = ask(session, Command.DEVICE_GET_REGION_INFO, RegionInfoRequest(32, 0).encode())
    info = RegionInfo.decode(small.payload)
    assert info.argsz == 32 + 8 + 8 + 16  # fixed part + cap header + nr_areas + one area
    assert len(small.payload) == 32 and info.cap_offset == 0
    assert not info.flags & RegionFlags.CAPS and info.flags & RegionFlags.MMAP
    assert small.fds == (source.fd,)
    full = ask(session, Command.DEVICE_GET_REGION_INFO,
               RegionInfoRequest(info.argsz, 0).encode())
    info = RegionInfo.decode(full.payload)
    assert info.flags & RegionFlags.CAPS and info.cap_offset == 32
    assert info.sparse_areas == (SparseMmapArea(0x1000, 0x1000),)
    assert info.offset == source.offset
    assert full.fds == (source.fd,)


def test_client_that_takes_no_fds_gets_no_mmap(two_page_uart: VfioDevice) -> None:
    session = negotiated(two_page_uart, max_msg_fds=0)
    reply = ask(session, Command.DEVICE_GET_REGION_INFO, RegionInfoRequest(512, 0).encode())
    info = RegionInfo.decode(reply.payload)
    assert not info.flags & (RegionFlags.MMAP | RegionFlags.CAPS) and reply.fds == ()


def test_irq_info(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    info = IrqInfo.decode(ask(session, Command.DEVICE_GET_IRQ_INFO,
                              IrqInfo(16, 0, 0, 0).encode()).payload)
    assert info.count == 1 and info.argsz == 16
    assert info.flags == IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | IrqInfoFlags.AUTOMASKED
    assert refused(session, Command.DEVICE_GET_IRQ_INFO, IrqInfo(16, 0, 1, 0).encode()) \
        == errno.EINVAL
    assert refused(session, Command.DEVICE_GET_IRQ_INFO, IrqInfo(8, 0, 0, 0).encode()) \
        == errno.EINVAL


# ----------------------------------------------------------------- interrupts


def test_set_irqs_eventfd_trigger_and_loopback(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    mine = os.dup(efd)
    trigger = SetIrqs(20, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 0, 1)
    assert not ask(session, Command.DEVICE_SET_IRQS, trigger.encode(), (mine,)).header.is_error
    assert not is_open(mine) or os.fstat(mine) != os.fstat(efd)  # the session closed its fd
    loop = SetIrqs(20, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER, 0, 0, 1)
    ask(session, Command.DEVICE_SET_IRQS, loop.encode())
    assert os.eventfd_read(efd) == 1
    os.close(efd)


def test_set_irqs_fd_count_mismatch_is_einval_and_closes_fds(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    fds = (pipe_fd(), pipe_fd())
    trigger = SetIrqs(20, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 0, 1)
    assert refused(session, Command.DEVICE_SET_IRQS, trigger.encode(), fds) == errno.EINVAL
    assert not any(is_open(fd) for fd in fds)
    bad_index = SetIrqs(20, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, 4, 0, 1)
    assert refused(session, Command.DEVICE_SET_IRQS, bad_index.encode()) == errno.EINVAL


def test_fds_on_a_command_that_takes_none_are_einval(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    fd = pipe_fd()
    assert refused(session, Command.DEVICE_RESET, b"", (fd,)) == errno.EINVAL
    assert not is_open(fd)


# ----------------------------------------------------------------- region access


def test_region_read_write_and_bounds(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    reply = ask(session, Command.REGION_READ, RegionRead(0xFE0, 0, 4).encode())
    read = RegionReadReply.decode(reply.payload)
    assert read.count == 4 and read.data == rtc.read(0, 0xFE0, 4).to_bytes(4, "little")
    ask(session, Command.REGION_WRITE, RegionWrite(0x4, 0, 4, b"\x10\x00\x00\x00").encode())
    assert rtc.read(0, 0x4, 4) == 0x10  # PL031 RTCMR holds what was written
    for access, code in [
        (RegionRead(0x1000, 0, 4), errno.EINVAL),  # past the end
        (RegionRead(0xFFE, 0, 4), errno.EINVAL),  # straddles the end
        (RegionRead(0, 1, 4), errno.EINVAL),  # no such region
        (RegionRead(0, 0, 0), errno.EINVAL),  # empty
        (RegionRead(0, 0, 2 << 20), errno.E2BIG),  # above max_data_xfer_size
    ]:
        assert refused(session, Command.REGION_READ, access.encode()) == code


def test_unaligned_and_long_reads_are_split_like_vfio_platform(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    whole = RegionReadReply.decode(ask(session, Command.REGION_READ,
                                       RegionRead(0xFE0, 0, 32).encode()).payload).data
    ids = b"".join(rtc.read(0, 0xFE0 + 4 * i, 4).to_bytes(4, "little") for i in range(8))
    assert whole == ids
    odd = RegionReadReply.decode(ask(session, Command.REGION_READ,
                                     RegionRead(0xFE1, 0, 3).encode()).payload).data
    assert odd == ids[1:4]
    assert Session.pieces(0x1, 7) == [(1, 1), (2, 2), (4, 4)]


def test_write_multi_when_negotiated_checks_all_before_applying_any(rtc: VfioDevice) -> None:
    session = Session(rtc)
    ask(session, Command.VERSION, Version(0, 1, {"write_multiple": True}).encode())
    good = RegionWriteMulti((SingleWrite(0x4, 0, 4, b"\x11\0\0\0"),
                             SingleWrite(0x4, 0, 1, b"\x12")))
    reply = ask(session, Command.REGION_WRITE_MULTI, good.encode())
    assert RegionWriteMultiReply.decode(reply.payload).wr_cnt == 2
    assert rtc.read(0, 0x4, 4) == 0x12
    bad = RegionWriteMulti((SingleWrite(0x4, 0, 4, b"\x99\0\0\0"),
                            SingleWrite(0x2000, 0, 4, bytes(4))))
    assert refused(session, Command.REGION_WRITE_MULTI, bad.encode()) == errno.EINVAL
    assert rtc.read(0, 0x4, 4) == 0x12  # the first write was not applied either


def test_no_reply_write_is_applied_silently(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    flags = MessageType.COMMAND | HeaderFlags.NO_REPLY
    write = RegionWrite(0x4, 0, 4, b"\x22\x00\x00\x00").encode()
    assert session.handle(msg(Command.REGION_WRITE, write, flags=flags)) is None
    assert rtc.read(0, 0x4, 4) == 0x22
    bad = RegionWrite(0x2000, 0, 4, bytes(4)).encode()
    assert session.handle(msg(Command.REGION_WRITE, bad, flags=flags)) is None


# ----------------------------------------------------------------- DMA, reset, the rest


def test_dma_map_unmap_records_and_closes_the_fd(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    fd = pipe_fd()
    assert not ask(session, Command.DMA_MAP, MAP_RW.encode(), (fd,)).header.is_error
    assert not is_open(fd)  # emulated IOMMU: the memory is never mapped
    assert refused(session, Command.DMA_MAP, MAP_RW.encode()) == errno.EEXIST
    unmap = DmaUnmap(24, 0, MAP_RW.address, MAP_RW.size)
    reply = ask(session, Command.DMA_UNMAP, unmap.encode())
    assert DmaUnmap.decode(reply.payload) == unmap
    assert refused(session, Command.DMA_UNMAP, unmap.encode()) == errno.ENOENT
    assert refused(session, Command.DMA_UNMAP, DmaUnmap(16, 0, 0, 4096).encode()) \
        == errno.EINVAL
    ask(session, Command.DMA_MAP, MAP_RW.encode())
    second = DmaMap(32, 3, 0, MAP_RW.address + 0x1000, 0x1000)  # type: ignore[arg-type]
    ask(session, Command.DMA_MAP, second.encode())
    both = DmaUnmap(24, 0, MAP_RW.address, 0x2000)  # covers two maps, matches neither
    assert refused(session, Command.DMA_UNMAP, both.encode()) == errno.ENOENT
    assert len(rtc.iommu) == 2
    ask(session, Command.DMA_UNMAP, DmaUnmap(24, 2, 0, 0).encode())
    assert len(rtc.iommu) == 0


def test_dma_deny_policy_is_enotsup(make_device: Callable[..., VfioDevice]) -> None:
    session = negotiated(make_device("arm,pl031", deny_dma=True))
    assert refused(session, Command.DMA_MAP, MAP_RW.encode()) == errno.ENOTSUP


@pytest.mark.parametrize(("command", "payload", "code"), [
    (Command.DEVICE_GET_REGION_IO_FDS, RegionIoFdsRequest(16, 0, 0, 0).encode(), errno.ENOTSUP),
    (Command.DMA_READ, bytes(16), errno.ENOTSUP),
    (Command.DMA_WRITE, bytes(16), errno.ENOTSUP),
    (Command.REGION_WRITE_MULTI,
     RegionWriteMulti((SingleWrite(4, 0, 4, bytes(4)),)).encode(), errno.ENOTSUP),
    (Command.DEVICE_FEATURE, bytes(8), errno.ENOTTY),
    (Command.MIG_DATA_READ, bytes(8), errno.ENOTSUP),
    (0, b"", errno.ENOSYS),
    (14, b"", errno.ENOSYS),
    (999, b"", errno.ENOSYS),
])
def test_unsupported_commands(rtc: VfioDevice, command: int, payload: bytes,
                              code: int) -> None:
    assert refused(negotiated(rtc), command, payload) == code


def test_invalid_message_type_is_einval(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    reply = session.handle(msg(Command.DEVICE_RESET, flags=2))
    assert reply is not None and reply.header.error == errno.EINVAL


def test_reset_and_replies_are_dropped(rtc: VfioDevice) -> None:
    session = negotiated(rtc)
    assert not ask(session, Command.DEVICE_RESET).header.is_error
    fd = pipe_fd()
    stray = Message(Header(9, Command.DEVICE_RESET, HEADER_SIZE, MessageType.REPLY), b"",
                    (fd,))
    assert session.handle(stray) is None and not is_open(fd)
