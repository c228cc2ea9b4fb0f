"""The KVM client's end of vfio-user: a platpass device served over a socket, in a guest.

:class:`VfioUserChannel` presents :class:`platpass.vfio_user.client.VfioUserClient` with
the VFIO device API the passthrough layer uses (the region's mmap fd arrives with
GET_REGION_INFO; the offset to map it at is the reply's ``offset``). :func:`attach_socket`
connects, wires the device into a VM at the addresses of its placement record (or at
addresses given explicitly) and returns the :class:`PassthroughDevice`.

Trapped accesses travel on the vCPU thread: a read is a blocking REGION_READ; a write is
**posted** by default (REGION_WRITE with the no-reply flag: the vCPU resumes as soon as
it is sent, as after a posted bus write), and the one socket keeps order, so a later read
or SET_IRQS sees it. ``posted_writes=False`` waits for each write's reply instead (a write
the device refuses is then counted in ``PassthroughStats.refused``; posted, the server
counts and logs it). Interrupts never touch this process (device -> eventfd -> KVM irqfd
-> guest; guest EOI -> KVM resamplefd -> device UNMASK).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from platpass.errors import PlatpassError, VmmError
from platpass.guest.placement import DevicePlacement
from platpass.host.backend import MapSource
from platpass.vfio_device.uapi import IrqInfoFlags, RegionFlags
from platpass.vfio_user.client import VfioUserClient
from platpass.vmm.kvm import PAGE_SIZE, Vm
from platpass.vmm.passthrough import PassthroughDevice


@dataclass(frozen=True, slots=True)
class ChannelDeviceInfo:
    """``DEVICE_GET_INFO`` as the passthrough layer reads it."""

    flags: int
    num_regions: int
    num_irqs: int


@dataclass(frozen=True, slots=True)
class ChannelRegionInfo:
    """A region as the passthrough layer reads it; ``map_source`` is the received fd."""

    index: int
    flags: RegionFlags
    size: int
    sparse_areas: tuple[object, ...] | None
    map_source: MapSource | None


@dataclass(frozen=True, slots=True)
class ChannelIrqInfo:
    index: int
    flags: IrqInfoFlags
    count: int


class VfioUserChannel:
    """A :class:`~platpass.vmm.passthrough.DeviceChannel` over a vfio-user connection.

    Keeps the region fds the server sent until :meth:`close` (the memory slots' mmaps hold
    their own references, so closing early would also be safe).
    """

    def __init__(self, client: VfioUserClient, *, posted_writes: bool = True) -> None:
        self.client = client
        #: A trapped read is the client's own (no layer of this class in between).
        self.read: Callable[[int, int, int], int] = client.read
        #: Writes go without waiting for a reply (see the module docstring).
        self.posted_writes = posted_writes
        self._fds: list[int] = []

    @classmethod
    def connect(cls, path: str | os.PathLike[str], timeout: float = 10.0, *,
                posted_writes: bool = True) -> VfioUserChannel:
        """Connect and negotiate; VmmError when the server cannot be reached or refuses."""
        try:
            return cls(VfioUserClient.connect(path, timeout=timeout),
                       posted_writes=posted_writes)
        except PlatpassError as err:
            raise VmmError(f"cannot connect to the vfio-user device at {path}: {err}") from err

    @property
    def info(self) -> ChannelDeviceInfo:
        raw = self.client.device_info()
        return ChannelDeviceInfo(raw.flags, raw.num_regions, raw.num_irqs)

    def region_info(self, index: int) -> ChannelRegionInfo:
        desc = self.client.region_info(index)
        source = None
        if desc.fd is not None:
            self._fds.append(desc.fd)
            source = MapSource(desc.fd, desc.info.offset)
        return ChannelRegionInfo(index, RegionFlags(desc.info.flags), desc.info.size,
                                 desc.info.sparse_areas, source)

    def irq_info(self, index: int) -> ChannelIrqInfo:
        raw = self.client.irq_info(index)
        return ChannelIrqInfo(index, IrqInfoFlags(raw.flags), raw.count)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.client.write(region, offset, size, value, posted=self.posted_writes)

    def set_irqs(self, index: int, flags: int, start: int, count: int, *,
                 bools: Sequence[bool] = (), fds: Sequence[int] = ()) -> None:
        self.client.set_irqs(index, flags, start, count, bools=tuple(bools), fds=tuple(fds))

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self.client.close()


def guest_layout(vm: Vm, placement: DevicePlacement) -> tuple[list[int], list[int]]:
    """Guest region bases (page-aligned, as KVM slots need) and GSIs for ``placement``.

    The record's guest addresses are used as they are; its guest SPIs are GIC numbers, so
    on x86 each interrupt gets the VM's next free GSI instead (the arch module decides).
    """
    bases = []
    for region in placement.regions:
        if region.guest_address % PAGE_SIZE:
            raise VmmError(f"{placement.host_path}: region {region.index} sits at guest "
                           f"{region.guest_address:#x}, not page-aligned; the KVM client "
                           "maps whole pages")
        bases.append(region.guest_address)
    gsis = [vm.allocate_gsi() for _ in placement.interrupts]
    return bases, gsis


def attach_socket(vm: Vm, path: str | Path, name: str, *,
                  placement: DevicePlacement | None = None,
                  guest_addresses: Sequence[int] = (), gsis: Sequence[int] = (),
                  map_regions: bool = True, posted_writes: bool = True
                  ) -> tuple[PassthroughDevice, VfioUserChannel]:
    """Connect to the device at ``path`` and wire it into ``vm``.

    Addresses come from ``placement`` when given, else from ``guest_addresses``/``gsis``;
    ``posted_writes=False`` makes every trapped write wait for its reply.
    Raises VmmError (connection, placement or KVM failure); nothing is left attached.
    """
    channel = VfioUserChannel.connect(path, posted_writes=posted_writes)
    try:
        if placement is not None:
            guest_addresses, gsis = guest_layout(vm, placement)
        elif not gsis:
            gsis = [vm.allocate_gsi() for _ in range(channel.info.num_irqs)]
        device = PassthroughDevice(vm, channel, name, guest_addresses, gsis,
                                   map_regions=map_regions)
        device.attach()
    except BaseException:
        channel.close()
        raise
    return device, channel
