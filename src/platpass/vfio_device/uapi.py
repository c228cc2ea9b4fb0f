"""Wire values from Linux's ``include/uapi/linux/vfio.h`` that platform devices use.

The vfio-user protocol reuses these layouts and flags, and so do the kernel VFIO backend
and the KVM client, so they live here once. Values are pinned by tests to the header.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag


class DeviceFlags(IntFlag):
    """``vfio_device_info.flags``."""

    RESET = 1 << 0
    PCI = 1 << 1
    PLATFORM = 1 << 2
    AMBA = 1 << 3
    CCW = 1 << 4
    AP = 1 << 5
    FSL_MC = 1 << 6
    CAPS = 1 << 7


class RegionFlags(IntFlag):
    """``vfio_region_info.flags``."""

    READ = 1 << 0
    WRITE = 1 << 1
    MMAP = 1 << 2
    CAPS = 1 << 3


class RegionCapId(IntEnum):
    """Capability ids in a region info capability chain."""

    SPARSE_MMAP = 1
    TYPE = 2


class IrqInfoFlags(IntFlag):
    """``vfio_irq_info.flags``."""

    EVENTFD = 1 << 0
    MASKABLE = 1 << 1
    AUTOMASKED = 1 << 2
    NORESIZE = 1 << 3


class IrqSetFlags(IntFlag):
    """``vfio_irq_set.flags``: one DATA_* type and one ACTION_* must be set."""

    DATA_NONE = 1 << 0
    DATA_BOOL = 1 << 1
    DATA_EVENTFD = 1 << 2
    ACTION_MASK = 1 << 3
    ACTION_UNMASK = 1 << 4
    ACTION_TRIGGER = 1 << 5

    @classmethod
    def data_mask(cls) -> IrqSetFlags:
        """All DATA_* bits."""
        return cls.DATA_NONE | cls.DATA_BOOL | cls.DATA_EVENTFD

    @classmethod
    def action_mask(cls) -> IrqSetFlags:
        """All ACTION_* bits."""
        return cls.ACTION_MASK | cls.ACTION_UNMASK | cls.ACTION_TRIGGER


class DmaMapFlags(IntFlag):
    """``vfio_iommu_type1_dma_map.flags`` (vfio-user DMA_MAP uses the same bits)."""

    READ = 1 << 0
    WRITE = 1 << 1


#: The widths of one device access (naturally aligned): vfio-platform's region read/write
#: handlers accept these, and the vfio-user codec's fast path carries exactly one of them.
ACCESS_SIZES = (1, 2, 4, 8)

VFIO_NOIOMMU_IOMMU = 8
VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
#: Linux's vfio-platform places region N at file offset ``N << 40``.
VFIO_PLATFORM_OFFSET_SHIFT = 40
