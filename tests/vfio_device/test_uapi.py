"""The VFIO wire values, pinned to ``include/uapi/linux/vfio.h``.

Each value is written out as the header defines it; when the machine has the kernel's UAPI
headers (Debian's linux-libc-dev), every pinned name is also checked against the installed
header's ``#define`` so a transcription error cannot hide in both places.
"""

from __future__ import annotations

import re
from pathlib import Path

from platpass.vfio_device import uapi
from platpass.vfio_device.uapi import (
    DeviceFlags,
    DmaMapFlags,
    IrqInfoFlags,
    IrqSetFlags,
    RegionCapId,
    RegionFlags,
)

PINNED: dict[str, tuple[int, int]] = {
    "VFIO_DEVICE_FLAGS_RESET": (DeviceFlags.RESET, 1 << 0),
    "VFIO_DEVICE_FLAGS_PCI": (DeviceFlags.PCI, 1 << 1),
    "VFIO_DEVICE_FLAGS_PLATFORM": (DeviceFlags.PLATFORM, 1 << 2),
    "VFIO_DEVICE_FLAGS_AMBA": (DeviceFlags.AMBA, 1 << 3),
    "VFIO_DEVICE_FLAGS_CCW": (DeviceFlags.CCW, 1 << 4),
    "VFIO_DEVICE_FLAGS_AP": (DeviceFlags.AP, 1 << 5),
    "VFIO_DEVICE_FLAGS_FSL_MC": (DeviceFlags.FSL_MC, 1 << 6),
    "VFIO_DEVICE_FLAGS_CAPS": (DeviceFlags.CAPS, 1 << 7),
    "VFIO_REGION_INFO_FLAG_READ": (RegionFlags.READ, 1 << 0),
    "VFIO_REGION_INFO_FLAG_WRITE": (RegionFlags.WRITE, 1 << 1),
    "VFIO_REGION_INFO_FLAG_MMAP": (RegionFlags.MMAP, 1 << 2),
    "VFIO_REGION_INFO_FLAG_CAPS": (RegionFlags.CAPS, 1 << 3),
    "VFIO_REGION_INFO_CAP_SPARSE_MMAP": (RegionCapId.SPARSE_MMAP, 1),
    "VFIO_REGION_INFO_CAP_TYPE": (RegionCapId.TYPE, 2),
    "VFIO_IRQ_INFO_EVENTFD": (IrqInfoFlags.EVENTFD, 1 << 0),
    "VFIO_IRQ_INFO_MASKABLE": (IrqInfoFlags.MASKABLE, 1 << 1),
    "VFIO_IRQ_INFO_AUTOMASKED": (IrqInfoFlags.AUTOMASKED, 1 << 2),
    "VFIO_IRQ_INFO_NORESIZE": (IrqInfoFlags.NORESIZE, 1 << 3),
    "VFIO_IRQ_SET_DATA_NONE": (IrqSetFlags.DATA_NONE, 1 << 0),
    "VFIO_IRQ_SET_DATA_BOOL": (IrqSetFlags.DATA_BOOL, 1 << 1),
    "VFIO_IRQ_SET_DATA_EVENTFD": (IrqSetFlags.DATA_EVENTFD, 1 << 2),
    "VFIO_IRQ_SET_ACTION_MASK": (IrqSetFlags.ACTION_MASK, 1 << 3),
    "VFIO_IRQ_SET_ACTION_UNMASK": (IrqSetFlags.ACTION_UNMASK, 1 << 4),
    "VFIO_IRQ_SET_ACTION_TRIGGER": (IrqSetFlags.ACTION_TRIGGER, 1 << 5),
    "VFIO_DMA_MAP_FLAG_READ": (DmaMapFlags.READ, 1 << 0),
    "VFIO_DMA_MAP_FLAG_WRITE": (DmaMapFlags.WRITE, 1 << 1),
    "VFIO_TYPE1_IOMMU": (uapi.VFIO_TYPE1_IOMMU, 1),
    "VFIO_TYPE1v2_IOMMU": (uapi.VFIO_TYPE1v2_IOMMU, 3),
    "VFIO_NOIOMMU_IOMMU": (uapi.VFIO_NOIOMMU_IOMMU, 8),
}

HEADER = Path("/usr/include/linux/vfio.h")
_DEFINE = re.compile(r"^#define\s+(VFIO_\w+)\s+\(?\s*(\d+)\s*(?:<<\s*(\d+))?\s*\)?", re.M)


def test_masks_cover_exactly_the_data_and_action_bits() -> None:
    assert int(IrqSetFlags.data_mask()) == 0x7
    assert int(IrqSetFlags.action_mask()) == 0x38


def test_platform_region_offset_shift() -> None:
    # vfio_platform_private.h: VFIO_PLATFORM_OFFSET_SHIFT 40.
    assert uapi.VFIO_PLATFORM_OFFSET_SHIFT == 40


def test_values_match_the_header_text_and_the_installed_header() -> None:
    for name, (ours, header_value) in PINNED.items():
        assert int(ours) == header_value, name
    if not HEADER.exists():
        return  # no UAPI headers installed: the pinned literals above were checked
    defines = {
        m.group(1): int(m.group(2)) << int(m.group(3) or 0)
        for m in _DEFINE.finditer(HEADER.read_text())
    }
    checked = 0
    for name, (ours, _) in PINNED.items():
        if name in defines:
            assert int(ours) == defines[name], name
            checked += 1
    assert checked >= len(PINNED) - 2, "the header parser found too few of the names"
