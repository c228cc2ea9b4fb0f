"""The kernel VFIO ABI: ioctl numbers and struct layouts pinned to include/uapi/linux/vfio.h."""

from __future__ import annotations

import struct

import pytest

from platpass.host.vfio_kernel import uapi
from platpass.vfio_device.uapi import IrqSetFlags

# Values of the header macros as the kernel computes them (_IO(';', 100 + n)).
HEADER_IOCTLS = {
    "GET_API_VERSION": 0x3B64, "CHECK_EXTENSION": 0x3B65, "SET_IOMMU": 0x3B66,
    "GROUP_GET_STATUS": 0x3B67, "GROUP_SET_CONTAINER": 0x3B68,
    "GROUP_UNSET_CONTAINER": 0x3B69, "GROUP_GET_DEVICE_FD": 0x3B6A,
    "DEVICE_GET_INFO": 0x3B6B, "DEVICE_GET_REGION_INFO": 0x3B6C,
    "DEVICE_GET_IRQ_INFO": 0x3B6D, "DEVICE_SET_IRQS": 0x3B6E, "DEVICE_RESET": 0x3B6F,
}


@pytest.mark.parametrize(("name", "value"), sorted(HEADER_IOCTLS.items()))
def test_ioctl_numbers_match_header(name: str, value: int) -> None:
    assert uapi.VfioIoctl[name] == value


def test_ioc_encodes_direction_and_size_like_asm_generic() -> None:
    # KVM_GET_API_VERSION = _IO(0xAE, 0); KVM_RUN = _IO(0xAE, 0x80);
    # KVM_SET_USER_MEMORY_REGION = _IOW(0xAE, 0x46, 32 bytes) = 0x4020AE46
    assert uapi.io(0xAE, 0) == 0xAE00
    assert uapi.iow(0xAE, 0x46, 32) == 0x4020AE46
    assert uapi.ior(0xAE, 0x46, 32) == 0x8020AE46
    with pytest.raises(ValueError, match="does not fit"):
        uapi.ioc(uapi.IOC_READ, 0xAE, 0, 1 << 14)


def test_struct_sizes_match_header() -> None:
    assert uapi.GROUP_STATUS.size == 8
    # current header: ... cap_offset, pad (6.1 lacks the pad; the kernel accepts argsz >= 16)
    assert uapi.DEVICE_INFO.size == 24
    assert uapi.REGION_INFO.size == 32
    assert uapi.IRQ_INFO.size == 16
    assert uapi.IRQ_SET_HEADER.size == 20


def test_enum_values_match_header() -> None:
    assert (uapi.IommuType.TYPE1, uapi.IommuType.TYPE1v2, uapi.IommuType.NOIOMMU) == (1, 3, 8)
    assert (uapi.GroupFlags.VIABLE, uapi.GroupFlags.CONTAINER_SET) == (1, 2)


def test_irq_set_trigger_eventfd_layout() -> None:
    flags = IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER
    raw = uapi.pack_irq_set(flags, 0, 0, 1, fds=(7,))
    assert raw == struct.pack("<5Ii", 24, 0x24, 0, 0, 1, 7)


def test_irq_set_unmask_has_no_data() -> None:
    raw = uapi.pack_irq_set(IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 2, 0, 1)
    assert raw == struct.pack("<5I", 20, 0x11, 2, 0, 1)


def test_irq_set_bools_are_bytes() -> None:
    raw = uapi.pack_irq_set(IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_MASK, 0, 0, 2,
                            bools=(True, False))
    assert raw == struct.pack("<5I", 22, 0x0A, 0, 0, 2) + b"\x01\x00"


@pytest.mark.parametrize(("flags", "kwargs"), [
    (IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, {"fds": ()}),
    (IrqSetFlags.DATA_BOOL | IrqSetFlags.ACTION_MASK, {"bools": (True, True)}),
    (IrqSetFlags.ACTION_MASK, {}),
])
def test_irq_set_rejects_mismatched_data(flags: IrqSetFlags, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        uapi.pack_irq_set(flags, 0, 0, 1, **kwargs)


def test_region_info_round_trip() -> None:
    buf = uapi.pack_region_info(3)
    assert struct.unpack("<4I2Q", buf) == (32, 0, 3, 0, 0, 0)
    filled = struct.pack("<4I2Q", 32, 7, 0, 0, 0x1000, 0)
    info = uapi.unpack_region_info(filled)
    assert (info.size, info.offset, int(info.flags)) == (0x1000, 0, 7)
