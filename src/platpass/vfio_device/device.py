"""A VFIO platform device built from a device node, its driver and a host backend.

This is the transport-free heart of the VFIO side: the vfio-user server, the KVM client
and the tests all drive the same object. It promises ``linux/vfio.h`` semantics:

* device info: PLATFORM (AMBA for ``arm,primecell`` nodes) | RESET; one region per
  backend region, one IRQ index per interrupt;
* regions: READ|WRITE, MMAP for the pages a client may map (see
  :mod:`platpass.vfio_device.regions`), reads and writes of 1, 2, 4 or 8 bytes, naturally
  aligned and inside the region — anything else is EINVAL and touches nothing. An access
  that touches a driver trap goes to the driver, the rest to the backend; an access that
  straddles a trap boundary is split into naturally aligned halves until every piece is
  either wholly inside one trap or touches none, so an untrapped byte never reaches the
  driver and a trapped byte never reaches the backend;
* interrupts: :mod:`platpass.vfio_device.irqs`, or passed straight through to a kernel
  VFIO device (:mod:`platpass.host.vfio_kernel.passthrough`);
* DMA: the emulated IOMMU (:mod:`platpass.vfio_device.iommu`), never backed by memory.

Life cycle: :meth:`open` (a client starts: driver reset, fresh IRQ state),
:meth:`client_gone` (a client vanished: its fds closed, its DMA maps forgotten, device
state kept, as the vfio-user spec asks), :meth:`reset` (VFIO_DEVICE_RESET: driver reset,
IRQ configuration kept, like vfio-platform), :meth:`close` (device given up: fds closed,
driver reset, backend closed; later calls get ENODEV).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from platpass.drivers.common import PlatformDriver, Trap
from platpass.errors import PlatpassError, VfioError
from platpass.firmware.model import DeviceNode, Trigger
from platpass.host.backend import Backend
from platpass.reactor import Reactor
from platpass.vfio_device.iommu import DmaMapping, EmulatedIommu
from platpass.vfio_device.irqs import IrqController, IrqInfo, IrqStats
from platpass.vfio_device.regions import RegionInfo, SparseArea, region_info
from platpass.vfio_device.uapi import ACCESS_SIZES, DeviceFlags

if TYPE_CHECKING:
    from platpass.host.vfio_kernel.passthrough import KernelIrqs

__all__ = [
    "ACCESS_SIZES",
    "DeviceInfo",
    "DeviceStats",
    "DmaMapping",
    "IrqInfo",
    "IrqStats",
    "RegionInfo",
    "SparseArea",
    "VfioDevice",
]

_ACCESS_SIZE_SET = frozenset(ACCESS_SIZES)
#: size -> the first value that does not fit in it.
_VALUE_LIMIT = {size: 1 << (8 * size) for size in ACCESS_SIZES}
#: Routed accesses remembered per device and direction (see VfioDevice._plan_read): a
#: device has a few dozen registers; a client sweeping a large region must not make the
#: server remember every offset of it.
MAX_REMEMBERED_ACCESSES = 1024


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """``struct vfio_device_info`` without argsz."""

    flags: DeviceFlags
    num_regions: int
    num_irqs: int


@dataclass(slots=True)
class DeviceStats:
    """Counters of one device; ``irqs[i]`` are IRQ index ``i``'s."""

    irqs: tuple[IrqStats, ...]
    trapped_reads: int = 0
    trapped_writes: int = 0
    backend_reads: int = 0
    backend_writes: int = 0
    resets: int = 0
    dma_maps: int = 0
    dma_unmaps: int = 0
    refused: int = 0


class VfioDevice:
    """VFIO semantics for one platform device (see the module docstring).

    ``force_trap_all`` forbids mapping any page: the caller sets it when the firmware
    verdict says the device shares a page with another one (ASSIGNABLE_WITH_TRAPS for
    sub-page registers). ``iommu`` defaults to a private :class:`EmulatedIommu`.

    Raises :class:`VfioError` (ENODEV) when the backend does not match the node.
    """

    def __init__(self, node: DeviceNode, driver: PlatformDriver, backend: Backend,
                 reactor: Reactor, iommu: EmulatedIommu | None = None, *,
                 force_trap_all: bool = False) -> None:
        self.node = node
        self.driver = driver
        self.backend = backend
        self.iommu = iommu if iommu is not None else EmulatedIommu()
        self.force_trap_all = force_trap_all
        self._regions = backend.regions
        irq_count = backend.irq_count
        if irq_count > len(node.interrupts):
            raise VfioError(
                errno.ENODEV,
                f"{node.path}: backend has {irq_count} interrupt lines, firmware "
                f"describes {len(node.interrupts)}",
            )
        if node.regions and len(node.regions) != len(self._regions):
            raise VfioError(
                errno.ENODEV,
                f"{node.path}: backend has {len(self._regions)} regions, firmware "
                f"describes {len(node.regions)}",
            )
        self._traps: tuple[tuple[Trap, ...], ...] = tuple(
            tuple(t for t in driver.active_traps() if t.region == r)
            for r in range(len(self._regions))
        )
        self._sizes = tuple(r.size for r in self._regions)
        self._trap_spans = tuple(
            tuple((t.offset, t.offset + t.size) for t in traps) for traps in self._traps
        )
        levels = [
            irq.trigger.is_level or irq.trigger == Trigger.UNKNOWN
            for irq in node.interrupts[:irq_count]
        ]
        # A kernel VFIO backend takes the client's eventfds itself (no relay, the kernel's
        # interrupt semantics); every other backend reports line events to the controller.
        offer = getattr(backend, "irq_passthrough", None)
        passthrough = offer() if callable(offer) else None
        self.irqs: IrqController | KernelIrqs = (
            passthrough if passthrough is not None else IrqController(levels, backend, reactor))
        self._stats = DeviceStats(irqs=tuple(line.stats for line in self.irqs.lines))
        self._closed = False
        #: (region, offset, size) -> the routed access (valid accesses only; emptied by
        #: close(), so a closed device's accesses all take the checked path: ENODEV).
        self._read_plans: dict[tuple[int, int, int], Callable[[], int]] = {}
        self._write_plans: dict[tuple[int, int, int], Callable[[int], None]] = {}
        self._region_infos = tuple(self._build_region_info(r) for r in range(len(self._regions)))
        if passthrough is None:
            backend.attach(reactor, self.irqs)

    # -- info -------------------------------------------------------------------------

    @property
    def info(self) -> DeviceInfo:
        """``VFIO_DEVICE_GET_INFO``."""
        kind = DeviceFlags.AMBA if self.node.is_primecell else DeviceFlags.PLATFORM
        return DeviceInfo(kind | DeviceFlags.RESET, len(self._regions), self.irqs.count)

    def region_info(self, index: int) -> RegionInfo:
        """``VFIO_DEVICE_GET_REGION_INFO``; EINVAL for an unknown index."""
        self._check_open()
        if not 0 <= index < len(self._region_infos):
            raise VfioError(
                errno.EINVAL,
                f"region {index} out of range (device has {len(self._region_infos)})",
            )
        return self._region_infos[index]

    def irq_info(self, index: int) -> IrqInfo:
        """``VFIO_DEVICE_GET_IRQ_INFO``; EINVAL for an unknown index."""
        self._check_open()
        return self.irqs.info(index)

    @property
    def remembered_accesses(self) -> int:
        """How many distinct (region, offset, size) accesses have their route remembered,
        reads and writes together (at most ``2 * MAX_REMEMBERED_ACCESSES``)."""
        return len(self._read_plans) + len(self._write_plans)

    @property
    def stats(self) -> DeviceStats:
        """Live counters (the object is updated in place)."""
        return self._stats

    def _build_region_info(self, index: int) -> RegionInfo:
        backend_region = self._regions[index]
        address = self.node.regions[index].address if self.node.regions else None
        blocked = [(t.offset, t.size) for t in self._traps[index]]
        blocked += list(backend_region.side_effect_ranges)
        return region_info(
            index,
            size=backend_region.size,
            address=address,
            map_source=backend_region.map_source,
            blocked=blocked,
            trap_all=self.force_trap_all,
        )

    # -- region access ----------------------------------------------------------------

    def read(self, region: int, offset: int, size: int) -> int:
        """Read ``size`` bytes (little-endian value). EINVAL for a bad region/offset/size."""
        plan = self._read_plans.get((region, offset, size))
        if plan is not None:
            return plan()
        self._check_access(region, offset, size)
        return self._plan_read(region, offset, size)()

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes. EINVAL for a bad region/offset/size or a value that does not
        fit in ``size`` bytes."""
        plan = self._write_plans.get((region, offset, size))
        if plan is None:
            self._check_access(region, offset, size)
            plan = self._plan_write(region, offset, size)
        if not 0 <= value < _VALUE_LIMIT[size]:
            self._stats.refused += 1
            raise VfioError(errno.EINVAL, f"value {value:#x} does not fit in {size} bytes")
        plan(value)

    # An access is routed (driver trap, backend, or split) the same way every time: the
    # route of each valid access is worked out once and kept as a closure, so a register
    # read the guest repeats costs one dict look-up and the handler itself. Bounded: past
    # MAX_REMEMBERED_ACCESSES distinct accesses per direction, new ones are routed on each call.

    def _plan_read(self, region: int, offset: int, size: int) -> Callable[[], int]:
        stats = self._stats
        trap, inside = self._trap_for(region, offset, size)
        if trap is None:
            backend_read = self.backend.read

            def plan() -> int:
                stats.backend_reads += 1
                return backend_read(region, offset, size)
        elif inside or size == 1:
            trap_read, backend = self.driver.trap_read, self.backend

            def plan() -> int:
                stats.trapped_reads += 1
                return trap_read(backend, trap, region, offset, size)
        else:
            plan = partial(self._read, region, offset, size)
        if len(self._read_plans) < MAX_REMEMBERED_ACCESSES:
            self._read_plans[(region, offset, size)] = plan
        return plan

    def _plan_write(self, region: int, offset: int, size: int) -> Callable[[int], None]:
        stats = self._stats
        trap, inside = self._trap_for(region, offset, size)
        if trap is None:
            backend_write = self.backend.write

            def plan(value: int) -> None:
                stats.backend_writes += 1
                backend_write(region, offset, size, value)
        elif inside or size == 1:
            trap_write, backend = self.driver.trap_write, self.backend

            def plan(value: int) -> None:
                stats.trapped_writes += 1
                trap_write(backend, trap, region, offset, size, value)
        else:
            plan = partial(self._write, region, offset, size)
        if len(self._write_plans) < MAX_REMEMBERED_ACCESSES:
            self._write_plans[(region, offset, size)] = plan
        return plan

    def _check_access(self, region: int, offset: int, size: int) -> None:
        # On every region access: plain comparisons only.
        if self._closed:
            raise VfioError(errno.ENODEV, f"{self.node.path}: device closed")
        if not 0 <= region < len(self._sizes):
            self._stats.refused += 1
            raise VfioError(errno.EINVAL, f"region {region} out of range")
        if size not in _ACCESS_SIZE_SET or offset < 0 or offset % size:
            self._stats.refused += 1
            raise VfioError(
                errno.EINVAL,
                f"access of {size} bytes at {offset:#x}: need 1/2/4/8 bytes, naturally aligned",
            )
        if offset + size > self._sizes[region]:
            self._stats.refused += 1
            raise VfioError(
                errno.EINVAL,
                f"access [{offset:#x}, +{size}) past the end of region {region} "
                f"({self._sizes[region]:#x} bytes)",
            )

    def _trap_for(self, region: int, offset: int, size: int) -> tuple[Trap | None, bool]:
        """The trap an access touches and whether it lies wholly inside it; a straddling
        access or one touching two traps returns ``(trap, False)``."""
        touched = [t for t in self._traps[region] if t.covers(region, offset, size)]
        if not touched:
            return None, True
        trap = touched[0]
        inside = (len(touched) == 1 and trap.offset <= offset
                  and offset + size <= trap.offset + trap.size)
        return trap, inside

    def _read(self, region: int, offset: int, size: int) -> int:
        trap, inside = self._trap_for(region, offset, size)
        if trap is None:
            self._stats.backend_reads += 1
            return self.backend.read(region, offset, size)
        if inside or size == 1:
            self._stats.trapped_reads += 1
            return self.driver.trap_read(self.backend, trap, region, offset, size)
        half = size // 2
        low = self._read(region, offset, half)
        high = self._read(region, offset + half, half)
        return low | high << (8 * half)

    def _write(self, region: int, offset: int, size: int, value: int) -> None:
        trap, inside = self._trap_for(region, offset, size)
        if trap is None:
            self._stats.backend_writes += 1
            self.backend.write(region, offset, size, value)
            return
        if inside or size == 1:
            self._stats.trapped_writes += 1
            self.driver.trap_write(self.backend, trap, region, offset, size, value)
            return
        half = size // 2
        self._write(region, offset, half, value & ((1 << (8 * half)) - 1))
        self._write(region, offset + half, half, value >> (8 * half))

    # -- interrupts -------------------------------------------------------------------

    def set_irqs(self, index: int, flags: int, start: int, count: int, *,
                 bools: tuple[bool, ...] | list[bool] = (),
                 fds: tuple[int, ...] | list[int] = ()) -> None:
        """``VFIO_DEVICE_SET_IRQS``; see :meth:`IrqController.set_irqs` for what it raises.

        The device dup()s the fds it keeps; the caller still owns (and closes) ``fds``.
        """
        self._check_open()
        self.irqs.set_irqs(index, flags, start, count, bools=bools, fds=fds)

    # -- life cycle -------------------------------------------------------------------

    def open(self) -> None:
        """A client starts using the device: fresh IRQ state, device quiesced."""
        self._check_open()
        self.irqs.teardown()
        self._driver_reset()

    def reset(self) -> None:
        """``VFIO_DEVICE_RESET``: quiesce the device; IRQ configuration is kept."""
        self._check_open()
        self._driver_reset()

    def client_gone(self) -> list[DmaMapping]:
        """The client vanished: close its IRQ fds and forget its DMA maps (returned), keep
        the device's register state for the next client."""
        self._check_open()
        try:
            self.irqs.teardown()
        finally:
            removed = self.iommu.clear()  # even when the backend failed to mask a line
        return removed

    def close(self) -> None:
        """Give the device up: IRQ fds closed, DMA maps forgotten, device quiesced, backend
        closed. Idempotent."""
        if self._closed:
            return
        self.irqs.teardown()
        self.iommu.clear()
        try:
            self._driver_reset()
        finally:
            self._closed = True
            self._read_plans.clear()
            self._write_plans.clear()
            self.backend.close()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _driver_reset(self) -> None:
        self._stats.resets += 1
        self.driver.reset(self.backend)

    def _check_open(self) -> None:
        if self._closed:
            raise VfioError(errno.ENODEV, f"{self.node.path}: device closed")

    # -- DMA --------------------------------------------------------------------------

    def dma_map(self, iova: int, size: int, flags: int) -> DmaMapping:
        """Record a DMA map in the emulated IOMMU (see :meth:`EmulatedIommu.map`)."""
        self._check_open()
        mapping = self.iommu.map(iova, size, flags)
        self._stats.dma_maps += 1
        return mapping

    def dma_unmap(self, iova: int, size: int) -> list[DmaMapping]:
        """Forget DMA maps (see :meth:`EmulatedIommu.unmap`); returns the removed ones."""
        self._check_open()
        removed = self.iommu.unmap(iova, size)
        self._stats.dma_unmaps += len(removed)
        return removed


def close_devices(devices: Iterable[VfioDevice], log: logging.Logger) -> None:
    """Close every device (driver reset, backend released), logging what fails.

    Shutdown paths call this: one device that fails to reset must not keep the others from
    being reset and handed back, so a failure is a warning, not an exception. A backend
    whose device was removed fails the driver's reset with a plain ``OSError`` (EIO from
    the mapping or the UIO fd); :meth:`VfioDevice.close` has released the backend anyway.
    """
    for device in devices:
        try:
            device.close()
        except (PlatpassError, OSError) as err:
            log.warning("closing %s: %s", device.node.path, err,
                        extra={"device": device.node.path})

