"""The kernel VFIO backend: container + group + device fd of a vfio-platform/vfio-amba device.

Regions are mapped at their region offset in the device fd when the kernel allows it
(``MMAP``); otherwise accesses go through ``pread``/``pwrite``, which the kernel performs as
single ``ioread``/``iowrite`` of the same width. Interrupts are passed through: each line's
trigger is our own eventfd (``SET_IRQS`` TRIGGER), read from the reactor, and mask/unmask are
the kernel's ``ACTION_MASK``/``ACTION_UNMASK`` (vfio-platform automasks level lines itself,
so the semantics the VFIO device layer sees are the kernel's own).

That relay is for direct users of the backend. A :class:`VfioDevice` takes
:meth:`VfioKernelBackend.irq_passthrough` instead: the client's own eventfds go to the
kernel, and no interrupt passes through this process (see ``passthrough``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from platpass.errors import HostError
from platpass.host.backend import BackendRegion, IrqListener, MapSource
from platpass.host.uio import MappedRegisters
from platpass.host.vfio_kernel import uapi
from platpass.host.vfio_kernel.syscalls import KernelCallError, Syscalls
from platpass.reactor import Reactor
from platpass.vfio_device.uapi import DeviceFlags, IrqInfoFlags, IrqSetFlags, RegionFlags

if TYPE_CHECKING:
    from platpass.host.vfio_kernel.passthrough import KernelIrqs

_DEVICE_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_BUSES = ("platform", "amba")


def group_path(device_dir: Path, dev: Path = Path("/dev")) -> Path:
    """``/dev/vfio/N`` or, for a no-IOMMU group, ``/dev/vfio/noiommu-N``."""
    try:
        group = os.readlink(device_dir / "iommu_group").rsplit("/", 1)[-1]
    except OSError as err:
        raise HostError(f"{device_dir.name}: no IOMMU group ({err.strerror}); bound to "
                        "vfio-platform with enable_unsafe_noiommu_mode=1?") from err
    for candidate in (dev / "vfio" / group, dev / "vfio" / f"noiommu-{group}"):
        if candidate.exists():
            return candidate
    raise HostError(f"{device_dir.name}: group {group} has no node under {dev / 'vfio'}")


class VfioKernelBackend:
    """:class:`platpass.host.backend.Backend` over a device bound to a kernel VFIO driver."""

    def __init__(self, device: str, *, bus: str = "platform", sysfs: Path = Path("/sys"),
                 dev: Path = Path("/dev"), syscalls: Syscalls | None = None,
                 passthrough: bool = True) -> None:
        if not _DEVICE_NAME.fullmatch(device) or bus not in _BUSES:
            raise HostError(f"bad device {device!r} on bus {bus!r}")
        self.name = device
        #: Offer :meth:`irq_passthrough` (the VFIO device then hands the client's eventfds
        #: to the kernel); False makes the device relay through :meth:`attach` instead.
        self.passthrough = passthrough
        self._sys = syscalls or Syscalls()
        self._container = self._group = self._device = -1
        self._windows: dict[int, MappedRegisters] = {}
        self._eventfds: list[int] = []
        self._kernel_masked: list[bool] = []  # per line: fired and automasked by the kernel
        self._reactor: Reactor | None = None
        try:
            self._open(sysfs / "bus" / bus / "devices" / device, dev)
        except BaseException:
            self.close()
            raise

    def _open(self, device_dir: Path, dev: Path) -> None:
        s = self._sys
        gpath = group_path(device_dir, dev)
        self.noiommu = gpath.name.startswith("noiommu-")
        self._container = s.open(str(dev / "vfio" / "vfio"), os.O_RDWR)
        version = s.ioctl(self._container, uapi.VfioIoctl.GET_API_VERSION, 0, "container")
        if version != uapi.VFIO_API_VERSION:
            raise HostError(f"VFIO API version {version}, expected {uapi.VFIO_API_VERSION}")
        self._group = s.open(str(gpath), os.O_RDWR)
        status = uapi.pack_group_status()
        s.ioctl(self._group, uapi.VfioIoctl.GROUP_GET_STATUS, status, str(gpath))
        if uapi.GroupFlags.VIABLE not in uapi.unpack_group_status(status):
            raise HostError(f"{gpath}: group not viable (another device of the group is "
                            "bound to a host driver)")
        s.ioctl(self._group, uapi.VfioIoctl.GROUP_SET_CONTAINER,
                uapi.CONTAINER_FD.pack(self._container), str(gpath))
        iommu = self._pick_iommu()
        s.ioctl(self._container, uapi.VfioIoctl.SET_IOMMU, int(iommu), "container")
        self.iommu = iommu
        self._device = s.ioctl(self._group, uapi.VfioIoctl.GROUP_GET_DEVICE_FD,
                               bytearray(self.name.encode() + b"\0"), str(gpath))
        if self._device <= 0:
            raise HostError(f"{gpath}: GROUP_GET_DEVICE_FD returned {self._device}")
        info = uapi.pack_device_info()
        s.ioctl(self._device, uapi.VfioIoctl.DEVICE_GET_INFO, info, self.name)
        self.info = uapi.unpack_device_info(info)
        self.region_infos: list[uapi.KernelRegionInfo] = []
        regions = []
        for index in range(self.info.num_regions):
            buf = uapi.pack_region_info(index)
            s.ioctl(self._device, uapi.VfioIoctl.DEVICE_GET_REGION_INFO, buf, self.name)
            region = uapi.unpack_region_info(buf)
            self.region_infos.append(region)
            source = None
            if RegionFlags.MMAP in region.flags:
                mapping = s.mmap(self._device, region.size, region.offset,
                                 f"{self.name} region {index}")
                self._windows[index] = MappedRegisters(mapping, 0, region.size)
                source = MapSource(self._device, region.offset)
            regions.append(BackendRegion(region.size, source))
        self._regions = tuple(regions)
        self.irq_infos: list[uapi.KernelIrqInfo] = []
        for index in range(self.info.num_irqs):
            buf = uapi.pack_irq_info(index)
            s.ioctl(self._device, uapi.VfioIoctl.DEVICE_GET_IRQ_INFO, buf, self.name)
            irq = uapi.unpack_irq_info(buf)
            if irq.count != 1 or IrqInfoFlags.EVENTFD not in irq.flags:
                raise HostError(f"{self.name}: IRQ index {index} is {irq}; platform devices "
                                "have one eventfd-capable line per index")
            self.irq_infos.append(irq)

    def _pick_iommu(self) -> uapi.IommuType:
        order = ((uapi.IommuType.NOIOMMU,) if self.noiommu
                 else (uapi.IommuType.TYPE1v2, uapi.IommuType.TYPE1))
        for kind in order:
            if self._sys.ioctl(self._container, uapi.VfioIoctl.CHECK_EXTENSION, int(kind),
                               "container") > 0:
                return kind
        raise HostError(f"the container supports none of {[k.name for k in order]}")

    # ------------------------------------------------------------------ Backend
    @property
    def regions(self) -> tuple[BackendRegion, ...]:
        return self._regions

    @property
    def irq_count(self) -> int:
        return len(self.irq_infos)

    @property
    def device_fd(self) -> int:
        return self._device

    def read(self, region: int, offset: int, size: int) -> int:
        window = self._windows.get(region)
        if window is not None:
            return window.read(offset, size)
        data = self._sys.pread(self._device, size, self.region_infos[region].offset + offset,
                               f"{self.name} region {region}")
        return int.from_bytes(data, "little")

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        window = self._windows.get(region)
        if window is not None:
            window.write(offset, size, value)
            return
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self._sys.pwrite(self._device, data, self.region_infos[region].offset + offset,
                         f"{self.name} region {region}")

    def irq_passthrough(self) -> KernelIrqs | None:
        """The interrupt controller that passes SET_IRQS straight to the kernel device
        (:mod:`platpass.host.vfio_kernel.passthrough`), or None when this backend relays
        (``passthrough=False``, or :meth:`attach` already set our own eventfds)."""
        if not self.passthrough or self._eventfds:
            return None
        from platpass.host.vfio_kernel.passthrough import KernelIrqs

        return KernelIrqs(self)

    def set_irqs(self, flags: IrqSetFlags, index: int, start: int, count: int, *,
                 bools: tuple[bool, ...] = (), fds: tuple[int, ...] = ()) -> None:
        """``VFIO_DEVICE_SET_IRQS`` on the kernel device as given; the kernel takes its own
        references to ``fds``. Raises :class:`KernelCallError` with the kernel's errno."""
        if not 0 <= index < self.irq_count:
            raise HostError(f"{self.name}: no interrupt line {index}")
        self._sys.ioctl(self._device, uapi.VfioIoctl.DEVICE_SET_IRQS,
                        uapi.pack_irq_set(flags, index, start, count, fds=fds, bools=bools),
                        f"{self.name} irq {index}")

    def attach(self, reactor: Reactor, listener: IrqListener) -> None:
        self._reactor = reactor
        self._kernel_masked = [False] * self.irq_count
        for index in range(self.irq_count):
            efd = self._sys.eventfd()
            self._eventfds.append(efd)
            self._set_irqs(IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, index,
                           fds=(efd,))
            reactor.add_reader(efd, self._reader(efd, index, listener))

    def mask_irq(self, index: int) -> None:
        # An AUTOMASKED line that fired is masked in the kernel already: skip the ioctl,
        # it would change nothing and costs a syscall on every interrupt.
        if index < len(self._kernel_masked) and self._kernel_masked[index]:
            return
        self._set_irqs(IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_MASK, index)

    def unmask_irq(self, index: int) -> None:
        self._set_irqs(IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, index)
        if index < len(self._kernel_masked):
            self._kernel_masked[index] = False

    def reset(self) -> bool:
        """``VFIO_DEVICE_RESET`` when the kernel offers one; False when it does not."""
        if DeviceFlags.RESET not in self.info.flags:
            return False
        self._sys.ioctl(self._device, uapi.VfioIoctl.DEVICE_RESET, 0, self.name)
        return True

    def close(self) -> None:
        if self._device >= 0:
            for index in range(len(self._eventfds)):
                # count 0 + DATA_NONE + TRIGGER: the kernel frees the handler and our eventfd.
                with contextlib.suppress(KernelCallError):
                    self._sys.ioctl(self._device, uapi.VfioIoctl.DEVICE_SET_IRQS,
                                    uapi.pack_irq_set(IrqSetFlags.DATA_NONE
                                                      | IrqSetFlags.ACTION_TRIGGER,
                                                      index, 0, 0), self.name)
        for efd in self._eventfds:
            if self._reactor is not None:
                self._reactor.remove_reader(efd)
            os.close(efd)
        self._eventfds.clear()
        self._reactor = None
        for window in self._windows.values():
            window.close()
        self._windows.clear()
        for attr in ("_device", "_group", "_container"):
            fd = getattr(self, attr)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, -1)

    # ------------------------------------------------------------------ internals
    def _set_irqs(self, flags: IrqSetFlags, index: int, *, fds: tuple[int, ...] = ()) -> None:
        if not 0 <= index < self.irq_count:
            raise HostError(f"{self.name}: no interrupt line {index}")
        self._sys.ioctl(self._device, uapi.VfioIoctl.DEVICE_SET_IRQS,
                        uapi.pack_irq_set(flags, index, 0, 1, fds=fds),
                        f"{self.name} irq {index}")

    def _reader(self, efd: int, index: int, listener: IrqListener) -> Callable[[], None]:
        automasked = IrqInfoFlags.AUTOMASKED in self.irq_infos[index].flags
        masked = self._kernel_masked

        def on_readable() -> None:
            try:
                os.read(efd, 8)
            except BlockingIOError:
                return
            if automasked:
                masked[index] = True
            listener.irq_fired(index)

        return on_readable
