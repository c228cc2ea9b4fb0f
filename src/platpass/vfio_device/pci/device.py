"""The VFIO *PCI* view of a platpass device (``vfio.h``'s vfio-pci ABI over a
:class:`~platpass.vfio_device.device.VfioDevice`).

Index layout, as vfio-pci reports it and QEMU's ``vfio-user-pci`` requires at realize:

* device flags PCI | RESET; 9 regions: 0-5 the BARs, 6 the expansion ROM (absent, size 0),
  7 the configuration space (256 bytes, :mod:`.config_space`), 8 VGA (absent);
* BAR ``i`` is platform region ``i``: a 32-bit memory BAR whose size is the region's
  rounded up to a power of two. Bytes past the region read as 0 and ignore writes. The
  region's traps and sparse-mmap windows are kept as they are (a trapped register stays
  trapped behind the BAR; the padding is never offered for mapping). While Memory Space
  Enable is clear, BAR reads and writes fail with EIO (what vfio-pci answers); pages a
  client already mapped cannot be revoked over vfio-user, and they hold only plain
  registers (the platform personality's mapping rule), so that costs nothing;
* where the guest driver expects the registers further into BAR0 (the ID table's
  ``bar0_offset``: ThunderX SPI finds its MPI block at BAR0 + 0x1000), the region starts
  there, the bytes before it read as 0 and ignore writes, and the BAR is not mappable (a
  mapping of the device's fd at the BAR's start would put the registers there);
* 5 IRQ indexes: 0 INTx (the device's one interrupt, count 1, EVENTFD | MASKABLE |
  AUTOMASKED: the platform line's own automasked level semantics, which are vfio-pci's
  INTx semantics — unmask by SET_IRQS or by an UNMASK eventfd, the KVM resampler), then
  MSI, MSI-X, ERR and REQ with count 0 (EVENTFD | NORESIZE, as vfio-pci reports them).
  Only "disable" (DATA_NONE | ACTION_TRIGGER, count 0) is accepted on the empty ones.

The command register's Interrupt Disable bit masks INTx and clearing it unmasks, sharing
the VFIO mask state — as vfio-pci's virtualised INTx disable does. Status bit 3 shows the
line: the backend's level where the backend reports it (the simulated models), else the
automasked state (fired and not yet unmasked).

A device with more than one interrupt, more than six regions, an edge-triggered line, or a
region that does not fit a 32-bit BAR is refused (:class:`PciPersonalityError`): INTx is
one level line per function, and a guest driver expects exactly what its ID implies.
"""

from __future__ import annotations

import errno
from typing import Any

from platpass.errors import VfioError
from platpass.vfio_device.device import DeviceInfo, DeviceStats, VfioDevice
from platpass.vfio_device.iommu import DmaMapping
from platpass.vfio_device.irqs import IrqInfo
from platpass.vfio_device.pci.config_space import (
    BAR_SLOTS,
    CONFIG_SIZE,
    Command,
    ConfigSpace,
    Identity,
    bar_size_for,
)
from platpass.vfio_device.regions import RegionInfo, SparseArea
from platpass.vfio_device.uapi import DeviceFlags, IrqInfoFlags, IrqSetFlags, RegionFlags

#: vfio.h ``VFIO_PCI_*_REGION_INDEX``.
ROM_REGION_INDEX = 6
CONFIG_REGION_INDEX = 7
VGA_REGION_INDEX = 8
NUM_REGIONS = 9
#: vfio.h ``VFIO_PCI_*_IRQ_INDEX``: INTX, MSI, MSIX, ERR, REQ.
INTX_IRQ_INDEX = 0
NUM_IRQS = 5
#: Largest BAR a 32-bit memory BAR can describe.
MAX_BAR32 = 1 << 31

_RW = RegionFlags.READ | RegionFlags.WRITE


class PciPersonalityError(VfioError):
    """The device cannot be presented as a PCI function; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENODEV, message)


class PciVfioDevice:
    """A :class:`VfioDevice` seen as a VFIO PCI function (see the module docstring).

    It takes over the inner device's life cycle (``open``/``reset``/``client_gone``/
    ``close``) and delegates DMA to it. Raises :class:`PciPersonalityError` when the
    device cannot be one PCI function.
    """

    def __init__(self, inner: VfioDevice, identity: Identity, bar0_offset: int = 0) -> None:
        self.inner = inner
        self.node = inner.node
        self.identity = identity
        info = inner.info
        path = inner.node.path
        if info.num_irqs != 1:
            raise PciPersonalityError(
                f"{path}: {info.num_irqs} interrupt lines; a PCI function has one INTx "
                "line (and no MSI here), so only single-interrupt devices get a PCI "
                "personality")
        if not inner.irqs.lines[0].level:
            raise PciPersonalityError(
                f"{path}: its interrupt is edge-triggered; INTx is a level line with "
                "automasked VFIO semantics, which an edge line cannot honour")
        if not 1 <= info.num_regions <= BAR_SLOTS:
            raise PciPersonalityError(
                f"{path}: {info.num_regions} MMIO regions; a type-0 header has "
                f"{BAR_SLOTS} BARs")
        if bar0_offset < 0 or bar0_offset % 0x1000:
            raise PciPersonalityError(f"{path}: BAR0 offset {bar0_offset:#x} is not a "
                                      "multiple of 4 KiB")
        self._real_sizes = tuple(inner.region_info(i).size for i in range(info.num_regions))
        #: Where each region starts inside its BAR (only BAR0 may be offset).
        self._bar_offsets = tuple(bar0_offset if i == 0 else 0
                                  for i in range(info.num_regions))
        sizes = []
        for index, size in enumerate(self._real_sizes):
            need = self._bar_offsets[index] + size
            if size <= 0 or bar_size_for(need) > MAX_BAR32:
                raise PciPersonalityError(
                    f"{path}: region {index} ({size:#x} bytes) does not fit a 32-bit BAR")
            sizes.append(bar_size_for(need))
        self._bar_sizes = tuple(sizes)
        self.config = ConfigSpace(identity, self._bar_sizes,
                                  interrupt_status=self._interrupt_asserted,
                                  on_command=self._command_changed)
        self._regions = tuple(self._build_region(i) for i in range(NUM_REGIONS))
        line_of = getattr(inner.backend, "line", None)
        self._backend_line = line_of if callable(line_of) else None

    # -- what the transports ask --------------------------------------------------------

    @property
    def info(self) -> DeviceInfo:
        """``VFIO_DEVICE_GET_INFO`` of a PCI function."""
        return DeviceInfo(DeviceFlags.PCI | DeviceFlags.RESET, NUM_REGIONS, NUM_IRQS)

    def _build_region(self, index: int) -> RegionInfo:
        if index < len(self._bar_sizes):
            inner = self.inner.region_info(index)
            bar = self._bar_sizes[index]
            if self._bar_offsets[index]:
                # The registers sit past the BAR's start, and a mapping of the device's fd
                # at the BAR's offset 0 would put them at its start: every access traps.
                return RegionInfo(index, inner.flags & ~RegionFlags.MMAP & ~RegionFlags.CAPS,
                                  bar, None, None)
            if bar == inner.size or not inner.mappable:
                return RegionInfo(index, inner.flags, bar, inner.sparse_areas,
                                  inner.map_source)
            # The padding past the region is not the device's: never mappable.
            areas = inner.sparse_areas or (SparseArea(0, inner.size),)
            return RegionInfo(index, inner.flags | RegionFlags.CAPS, bar, areas,
                              inner.map_source)
        if index == CONFIG_REGION_INDEX:
            return RegionInfo(index, _RW, CONFIG_SIZE, None, None)
        return RegionInfo(index, RegionFlags(0), 0, None, None)

    def region_info(self, index: int) -> RegionInfo:
        """``VFIO_DEVICE_GET_REGION_INFO``; EINVAL for an unknown index."""
        if not 0 <= index < NUM_REGIONS:
            raise VfioError(errno.EINVAL, f"region {index} out of range (PCI: {NUM_REGIONS})")
        return self._regions[index]

    def irq_info(self, index: int) -> IrqInfo:
        """``VFIO_DEVICE_GET_IRQ_INFO``; EINVAL for an unknown index."""
        if index == INTX_IRQ_INDEX:
            inner = self.inner.irq_info(0)
            return IrqInfo(index, inner.flags, inner.count)
        if 0 < index < NUM_IRQS:
            return IrqInfo(index, IrqInfoFlags.EVENTFD | IrqInfoFlags.NORESIZE, 0)
        raise VfioError(errno.EINVAL, f"IRQ index {index} out of range (PCI: {NUM_IRQS})")

    @property
    def stats(self) -> DeviceStats:
        """The inner device's counters (INTx is its IRQ index 0)."""
        return self.inner.stats

    @property
    def iommu(self) -> Any:
        """The inner device's emulated IOMMU."""
        return self.inner.iommu

    @property
    def irqs(self) -> Any:
        """The inner device's IRQ controller (INTx is its line 0)."""
        return self.inner.irqs

    @property
    def backend(self) -> Any:
        """The inner device's host backend."""
        return self.inner.backend

    @property
    def driver(self) -> Any:
        """The inner device's platform driver."""
        return self.inner.driver

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self.inner.closed

    # -- accesses -----------------------------------------------------------------------

    def read(self, region: int, offset: int, size: int) -> int:
        """Region read: config space, or a BAR (EIO while memory decoding is off)."""
        if region == CONFIG_REGION_INDEX:
            self._check_open()
            return self.config.read(offset, size)
        real = self._bar_access(region, offset, size)
        start = self._bar_offsets[region]
        offset -= start
        if not 0 <= offset < real:
            return 0
        if offset + size > real:  # straddles the padding: naturally aligned halves
            half = size // 2
            return self.read(region, start + offset, half) | \
                self.read(region, start + offset + half, half) << (8 * half)
        return self.inner.read(region, offset, size)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        """Region write: config space, or a BAR (EIO while memory decoding is off)."""
        if region == CONFIG_REGION_INDEX:
            self._check_open()
            self.config.write(offset, size, value)
            return
        real = self._bar_access(region, offset, size)
        if not 0 <= value < 1 << (8 * size):
            raise VfioError(errno.EINVAL, f"value {value:#x} does not fit in {size} bytes")
        start = self._bar_offsets[region]
        offset -= start
        if not 0 <= offset < real:
            return
        if offset + size > real:
            half = size // 2
            self.write(region, start + offset, half, value & ((1 << (8 * half)) - 1))
            self.write(region, start + offset + half, half, value >> (8 * half))
            return
        self.inner.write(region, offset, size, value)

    def _bar_access(self, region: int, offset: int, size: int) -> int:
        """Check a BAR access; returns the real region size behind the BAR."""
        self._check_open()
        if not 0 <= region < len(self._bar_sizes):
            raise VfioError(errno.EINVAL, f"region {region} is absent on this function")
        if size not in (1, 2, 4, 8) or offset < 0 or offset % size \
                or offset + size > self._bar_sizes[region]:
            raise VfioError(errno.EINVAL, f"BAR{region} access of {size} bytes at "
                            f"{offset:#x}: need 1/2/4/8 bytes, naturally aligned, inside "
                            f"{self._bar_sizes[region]:#x}")
        if not self.config.memory_enabled:
            raise VfioError(errno.EIO, f"BAR{region}: memory decoding is disabled "
                            "(command register bit 1)")
        return self._real_sizes[region]

    # -- interrupts ---------------------------------------------------------------------

    def set_irqs(self, index: int, flags: int, start: int, count: int, *,
                 bools: tuple[bool, ...] | list[bool] = (),
                 fds: tuple[int, ...] | list[int] = ()) -> None:
        """``VFIO_DEVICE_SET_IRQS``: INTx is the inner line 0; the empty indexes accept
        only disable (DATA_NONE | ACTION_TRIGGER, count 0). EINVAL otherwise."""
        if index == INTX_IRQ_INDEX:
            self.inner.set_irqs(0, flags, start, count, bools=bools, fds=fds)
            return
        if not 0 < index < NUM_IRQS:
            raise VfioError(errno.EINVAL, f"IRQ index {index} out of range (PCI: {NUM_IRQS})")
        disable = 1 | 1 << 5  # DATA_NONE | ACTION_TRIGGER
        if int(flags) == disable and count == 0 and start == 0 and not bools and not fds:
            return
        raise VfioError(errno.EINVAL, f"IRQ index {index} has no interrupts")

    def _command_changed(self, old: int, new: int) -> None:
        if (old ^ new) & Command.INTX_DISABLE:
            # Through SET_IRQS, which every IRQ back end of the inner device takes (the
            # emulated controller and a kernel VFIO device's own interrupts alike).
            action = IrqSetFlags.ACTION_MASK if new & Command.INTX_DISABLE \
                else IrqSetFlags.ACTION_UNMASK
            self.inner.set_irqs(0, IrqSetFlags.DATA_NONE | action, 0, 1)

    def _interrupt_asserted(self) -> bool:
        if self._backend_line is not None:
            return bool(self._backend_line(0))
        line = self.inner.irqs.lines[0]
        return line.masked and not self.config.intx_disabled

    # -- life cycle ---------------------------------------------------------------------

    def open(self) -> None:
        """Serving starts: the inner device is quiesced, the header is at power-on state."""
        self.inner.open()
        self.config.reset(notify=False)

    def reset(self) -> None:
        """``VFIO_DEVICE_RESET``: the device is quiesced; like vfio-pci (which saves and
        restores config state around a function reset) the header is kept."""
        self.inner.reset()

    def client_gone(self) -> list[DmaMapping]:
        """The client vanished: the inner device drops its fds and DMA maps and keeps its
        registers; the header returns to power-on state, because it is the client's
        enumeration (the next client programs BARs and command again) and an Interrupt
        Disable left set would contradict the unmasked line the next client starts with."""
        removed = self.inner.client_gone()
        self.config.reset(notify=False)
        return removed

    def close(self) -> None:
        """Give the device up (the inner device's :meth:`VfioDevice.close`)."""
        self.inner.close()

    def dma_map(self, iova: int, size: int, flags: int) -> DmaMapping:
        """Recorded in the inner device's emulated IOMMU, never backed by memory."""
        return self.inner.dma_map(iova, size, flags)

    def dma_unmap(self, iova: int, size: int) -> list[DmaMapping]:
        """Forget DMA maps in the inner device's emulated IOMMU."""
        return self.inner.dma_unmap(iova, size)

    def _check_open(self) -> None:
        if self.inner.closed:
            raise VfioError(errno.ENODEV, f"{self.node.path}: device closed")


def as_pci_function(device: VfioDevice, requested: str = "auto") -> tuple[PciVfioDevice, str]:
    """``device`` as a PCI function with the identity :func:`.ids.choose_identity` gives
    its driver and layout (``requested``: ``auto`` or ``VVVV:DDDD``), and the account of
    why that identity. The device is already one platpass assigns (a VfioDevice exists
    only for an assignable verdict), so the safety verdict is the platform one.

    Raises :class:`.ids.PciIdError` or :class:`PciPersonalityError` saying why not.
    """
    from platpass.vfio_device.pci.ids import bar0_offset, choose_identity

    identity, why = choose_identity(device.node, device.driver, requested)
    return PciVfioDevice(device, identity, bar0_offset(identity)), why
