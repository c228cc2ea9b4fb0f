"""Every ioctl number and C layout of ``include/uapi/linux/vfio.h`` the kernel backend uses.

Numbers are computed the way ``<asm-generic/ioctl.h>`` computes them (VFIO uses plain
``_IO(';', 100 + n)``: the argument size is not encoded) and pinned by tests to the header's
values. Layouts are :class:`struct.Struct` objects whose sizes the tests pin too; flag values
are shared with the vfio-user layer through :mod:`platpass.vfio_device.uapi`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from platpass.vfio_device.uapi import DeviceFlags, IrqInfoFlags, IrqSetFlags, RegionFlags

# ----------------------------------------------------------------- <asm-generic/ioctl.h>
IOC_NRBITS, IOC_TYPEBITS, IOC_SIZEBITS, IOC_DIRBITS = 8, 8, 14, 2
IOC_NRSHIFT = 0
IOC_TYPESHIFT = IOC_NRSHIFT + IOC_NRBITS
IOC_SIZESHIFT = IOC_TYPESHIFT + IOC_TYPEBITS
IOC_DIRSHIFT = IOC_SIZESHIFT + IOC_SIZEBITS
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioc(direction: int, kind: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)``."""
    if not 0 <= size < 1 << IOC_SIZEBITS:
        raise ValueError(f"ioctl argument size {size} does not fit in {IOC_SIZEBITS} bits")
    return ((direction << IOC_DIRSHIFT) | (kind << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)
            | (size << IOC_SIZESHIFT))


def io(kind: int, nr: int) -> int:
    """``_IO(type, nr)``: no argument size encoded."""
    return ioc(IOC_NONE, kind, nr, 0)


def ior(kind: int, nr: int, size: int) -> int:
    """``_IOR(type, nr, size)``."""
    return ioc(IOC_READ, kind, nr, size)


def iow(kind: int, nr: int, size: int) -> int:
    """``_IOW(type, nr, size)``."""
    return ioc(IOC_WRITE, kind, nr, size)


VFIO_TYPE = ord(";")
VFIO_BASE = 100
VFIO_API_VERSION = 0


class VfioIoctl(IntEnum):
    """The ioctl request numbers (all ``_IO(VFIO_TYPE, VFIO_BASE + n)``)."""

    GET_API_VERSION = io(VFIO_TYPE, VFIO_BASE + 0)
    CHECK_EXTENSION = io(VFIO_TYPE, VFIO_BASE + 1)
    SET_IOMMU = io(VFIO_TYPE, VFIO_BASE + 2)
    GROUP_GET_STATUS = io(VFIO_TYPE, VFIO_BASE + 3)
    GROUP_SET_CONTAINER = io(VFIO_TYPE, VFIO_BASE + 4)
    GROUP_UNSET_CONTAINER = io(VFIO_TYPE, VFIO_BASE + 5)
    GROUP_GET_DEVICE_FD = io(VFIO_TYPE, VFIO_BASE + 6)
    DEVICE_GET_INFO = io(VFIO_TYPE, VFIO_BASE + 7)
    DEVICE_GET_REGION_INFO = io(VFIO_TYPE, VFIO_BASE + 8)
    DEVICE_GET_IRQ_INFO = io(VFIO_TYPE, VFIO_BASE + 9)
    DEVICE_SET_IRQS = io(VFIO_TYPE, VFIO_BASE + 10)
    DEVICE_RESET = io(VFIO_TYPE, VFIO_BASE + 11)


class IommuType(IntEnum):
    """Arguments of CHECK_EXTENSION / SET_IOMMU."""

    TYPE1 = 1
    TYPE1v2 = 3
    NOIOMMU = 8


class GroupFlags(IntFlag):
    """``vfio_group_status.flags``."""

    VIABLE = 1 << 0
    CONTAINER_SET = 1 << 1


# ----------------------------------------------------------------- C layouts (little endian)
GROUP_STATUS = struct.Struct("<II")             # argsz, flags
DEVICE_INFO = struct.Struct("<IIIIII")  # argsz, flags, num_regions, num_irqs, cap_offset, pad
REGION_INFO = struct.Struct("<IIIIQQ")          # argsz, flags, index, cap_offset, size, offset
IRQ_INFO = struct.Struct("<IIII")               # argsz, flags, index, count
IRQ_SET_HEADER = struct.Struct("<IIIII")        # argsz, flags, index, start, count; data[]
CONTAINER_FD = struct.Struct("<i")              # GROUP_SET_CONTAINER takes an int32 fd


@dataclass(frozen=True, slots=True)
class KernelDeviceInfo:
    """A decoded ``vfio_device_info``."""

    flags: DeviceFlags
    num_regions: int
    num_irqs: int


@dataclass(frozen=True, slots=True)
class KernelRegionInfo:
    """A decoded ``vfio_region_info``: ``offset`` is where the region sits in the device fd."""

    index: int
    flags: RegionFlags
    size: int
    offset: int


@dataclass(frozen=True, slots=True)
class KernelIrqInfo:
    """A decoded ``vfio_irq_info``."""

    index: int
    flags: IrqInfoFlags
    count: int


def pack_group_status() -> bytearray:
    """A zeroed ``vfio_group_status`` for the kernel to fill."""
    return bytearray(GROUP_STATUS.pack(GROUP_STATUS.size, 0))


def unpack_group_status(buf: bytes | bytearray) -> GroupFlags:
    """The flags of a filled ``vfio_group_status``."""
    return GroupFlags(GROUP_STATUS.unpack(buf)[1])


def pack_device_info() -> bytearray:
    """A zeroed ``vfio_device_info`` for the kernel to fill."""
    return bytearray(DEVICE_INFO.pack(DEVICE_INFO.size, 0, 0, 0, 0, 0))


def unpack_device_info(buf: bytes | bytearray) -> KernelDeviceInfo:
    """Decode a filled ``vfio_device_info``."""
    _argsz, flags, regions, irqs, _cap, _pad = DEVICE_INFO.unpack(buf)
    return KernelDeviceInfo(DeviceFlags(flags), regions, irqs)


def pack_region_info(index: int) -> bytearray:
    """A ``vfio_region_info`` asking about region ``index``."""
    return bytearray(REGION_INFO.pack(REGION_INFO.size, 0, index, 0, 0, 0))


def unpack_region_info(buf: bytes | bytearray) -> KernelRegionInfo:
    """Decode a filled ``vfio_region_info``."""
    _argsz, flags, index, _cap, size, offset = REGION_INFO.unpack(buf)
    return KernelRegionInfo(index, RegionFlags(flags), size, offset)


def pack_irq_info(index: int) -> bytearray:
    """A ``vfio_irq_info`` asking about IRQ index ``index``."""
    return bytearray(IRQ_INFO.pack(IRQ_INFO.size, 0, index, 0))


def unpack_irq_info(buf: bytes | bytearray) -> KernelIrqInfo:
    """Decode a filled ``vfio_irq_info``."""
    _argsz, flags, index, count = IRQ_INFO.unpack(buf)
    return KernelIrqInfo(index, IrqInfoFlags(flags), count)


def pack_irq_set(flags: IrqSetFlags, index: int, start: int, count: int,
                 *, fds: tuple[int, ...] = (), bools: tuple[bool, ...] = ()) -> bytes:
    """A ``vfio_irq_set`` with its data array (eventfds as int32, bools as uint8).

    Raises ValueError when the data does not match the DATA_* type and ``count``.
    """
    data_type = flags & IrqSetFlags.data_mask()
    if data_type == IrqSetFlags.DATA_EVENTFD:
        if len(fds) != count:
            raise ValueError(f"DATA_EVENTFD needs {count} fds, got {len(fds)}")
        data = struct.pack(f"<{count}i", *fds)
    elif data_type == IrqSetFlags.DATA_BOOL:
        if len(bools) != count:
            raise ValueError(f"DATA_BOOL needs {count} bools, got {len(bools)}")
        data = bytes(1 if b else 0 for b in bools)
    elif data_type == IrqSetFlags.DATA_NONE:
        data = b""
    else:
        raise ValueError(f"exactly one DATA_* flag needed, got {flags!r}")
    size = IRQ_SET_HEADER.size + len(data)
    return IRQ_SET_HEADER.pack(size, int(flags), index, start, count) + data
