"""Wire one VFIO device (local or over vfio-user) into a KVM guest.

For each region, the mappable windows (the whole region, or the sparse-mmap areas) are
mmap'ed from the device's fd and installed as KVM memory slots at the region's guest
address: guest loads and stores there never leave the guest. The rest of the region is
registered as an MMIO range whose exits are forwarded to the device's region read/write
(the driver's traps, or registers with side effects). Each interrupt gets an eventfd bound
to a guest GSI with ``KVM_IRQFD`` and handed to the device as its TRIGGER; a level line
(AUTOMASKED) also gets a resample eventfd, handed to the device as its UNMASK eventfd, so
that the guest's EOI lowers the line in KVM and unmasks it at the device, which fires again
if the source is still asserted. No userspace code runs on the interrupt path.

The device is anything with the VFIO device API (:class:`DeviceChannel`):
:class:`platpass.vfio_device.device.VfioDevice` behind a :class:`ReactorThread`, or the
vfio-user client.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from platpass.errors import PlatpassError, VfioError, VmmError
from platpass.reactor import EpollReactor
from platpass.vfio_device.uapi import IrqInfoFlags, IrqSetFlags, RegionFlags
from platpass.vmm.kvm import PAGE_SIZE, Vm

T = TypeVar("T")


class DeviceChannel(Protocol):
    """The part of the VFIO device API the KVM client uses (VfioDevice and the vfio-user
    client both provide it)."""

    @property
    def info(self) -> Any: ...

    def region_info(self, index: int) -> Any: ...

    def irq_info(self, index: int) -> Any: ...

    def read(self, region: int, offset: int, size: int) -> int: ...

    def write(self, region: int, offset: int, size: int, value: int) -> None: ...

    def set_irqs(self, index: int, flags: int, start: int, count: int, *,
                 bools: Sequence[bool] = (), fds: Sequence[int] = ()) -> None: ...


class ReactorThread:
    """An :class:`EpollReactor` running in its own thread, with a thread-safe ``call``.

    A vCPU thread blocks in ``KVM_RUN``; the device's reactor must keep running meanwhile
    (model timers, UNMASK eventfds), so an in-process device lives on this thread and the
    vCPU's MMIO exits reach it through :meth:`call`.
    """

    def __init__(self, name: str = "platpass-device") -> None:
        self.reactor = EpollReactor()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue())
        self.reactor.add_reader(self._wake, self._drain)
        self._thread = threading.Thread(target=self.reactor.run_forever, name=name,
                                        daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake)
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as err:  # handed to the caller's thread
                fut.set_exception(err)

    def call(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run ``fn`` on the reactor thread and return its result (or raise its error).

        Raises VmmError at once when the thread has stopped.
        """
        if threading.current_thread() is self._thread:
            return fn()
        if not self._thread.is_alive():
            raise VmmError(f"{self._thread.name}: the device thread has stopped")
        fut: Future[T] = Future()
        self._calls.put((fn, fut))
        os.eventfd_write(self._wake, 1)
        return fut.result(timeout)

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate`` on the reactor thread until true or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not self.call(predicate):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        """Stop the loop and join the thread; idempotent."""
        if self._thread.is_alive():
            self.call(self.reactor.stop)
            self._thread.join(5)
        self.reactor.remove_reader(self._wake)
        with contextlib.suppress(OSError):
            os.close(self._wake)
        self.reactor.close()


class ThreadedDevice:
    """A :class:`DeviceChannel` whose every call runs on a :class:`ReactorThread`."""

    def __init__(self, device: DeviceChannel, thread: ReactorThread) -> None:
        self.device = device
        self.thread = thread

    @property
    def info(self) -> Any:
        return self.thread.call(lambda: self.device.info)

    def region_info(self, index: int) -> Any:
        return self.thread.call(lambda: self.device.region_info(index))

    def irq_info(self, index: int) -> Any:
        return self.thread.call(lambda: self.device.irq_info(index))

    def read(self, region: int, offset: int, size: int) -> int:
        return self.thread.call(lambda: self.device.read(region, offset, size))

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.thread.call(lambda: self.device.write(region, offset, size, value))

    def set_irqs(self, index: int, flags: int, start: int, count: int, *,
                 bools: Sequence[bool] = (), fds: Sequence[int] = ()) -> None:
        self.thread.call(lambda: self.device.set_irqs(index, flags, start, count,
                                                      bools=tuple(bools), fds=tuple(fds)))


@dataclass(slots=True)
class WiredIrq:
    """One device interrupt as wired into the guest."""

    index: int
    gsi: int
    level: bool
    trigger_fd: int
    resample_fd: int | None


@dataclass(slots=True)
class PassthroughStats:
    """What the wiring did: bytes mapped (no exits), exits forwarded to the device."""

    mapped_bytes: int = 0
    trapped_bytes: int = 0
    forwarded_reads: int = 0
    forwarded_writes: int = 0
    #: Guest accesses the device refused (read as all-ones / dropped).
    refused: int = 0
    slot_labels: list[str] = field(default_factory=list)


class _TrappedRange:
    """MMIO exits on the non-mapped part of one region, forwarded to the device.

    An access the device refuses (VfioError: a size or alignment the region does not
    allow) is the guest's mistake, not the VMM's: it reads as all-ones and a write is
    dropped, as on a bus that answers an error, and ``stats.refused`` counts it (a posted
    write's refusal is counted by the server instead: nothing comes back). A broken
    connection (any other platpass error, or the socket's OSError) ends the run with a
    VmmError.
    """

    def __init__(self, owner: PassthroughDevice, region: int, guest_base: int) -> None:
        self.owner = owner
        self.region = region
        self.guest_base = guest_base
        # Bound once: every trapped guest load comes through mmio_read.
        self._stats = owner.stats
        self._read = owner.channel.read
        self._write = owner.channel.write

    def mmio_read(self, address: int, size: int) -> int:
        self._stats.forwarded_reads += 1
        try:
            return self._read(self.region, address - self.guest_base, size)
        except VfioError:
            self.owner.stats.refused += 1
            return (1 << (8 * size)) - 1
        except (PlatpassError, OSError) as err:
            raise VmmError(f"{self.owner.name}: read of {size} bytes at guest "
                           f"{address:#x} failed: {err}") from err

    def mmio_write(self, address: int, size: int, value: int) -> None:
        self._stats.forwarded_writes += 1
        try:
            self._write(self.region, address - self.guest_base, size, value)
        except VfioError:
            self.owner.stats.refused += 1
        except (PlatpassError, OSError) as err:
            raise VmmError(f"{self.owner.name}: write of {size} bytes at guest "
                           f"{address:#x} failed: {err}") from err


def _windows(info: Any) -> list[tuple[int, int]]:
    """The mappable ``(offset, size)`` windows of a region, page-aligned."""
    if not info.flags & RegionFlags.MMAP or info.map_source is None:
        return []
    if info.sparse_areas is None:
        return [(0, info.size)]
    return [(a.offset, a.size) for a in info.sparse_areas if a.size > 0]


def _gaps(size: int, windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    gaps: list[tuple[int, int]] = []
    at = 0
    for off, length in sorted(windows):
        if off > at:
            gaps.append((at, off - at))
        at = max(at, off + length)
    if at < size:
        gaps.append((at, size - at))
    return gaps


class PassthroughDevice:
    """One device wired into ``vm``: call :meth:`attach` once, :meth:`detach` to undo.

    ``guest_addresses[r]`` is where region ``r`` appears in the guest (page-aligned);
    ``gsis[i]`` the guest interrupt line of IRQ index ``i``. Raises VmmError for bad
    placements or what KVM refuses, and converts the device's own errors (VfioError,
    VfioUserError) at this boundary; a failed attach leaves nothing behind.
    """

    def __init__(self, vm: Vm, channel: DeviceChannel, name: str,
                 guest_addresses: Sequence[int], gsis: Sequence[int],
                 *, map_regions: bool = True) -> None:
        self.vm = vm
        self.channel = channel
        self.name = name
        self.guest_addresses = tuple(guest_addresses)
        self.gsis = tuple(gsis)
        self.map_regions = map_regions
        self.stats = PassthroughStats()
        self.irqs: list[WiredIrq] = []
        self._maps: list[mmap.mmap] = []
        self._slots: list[Any] = []
        self._mmio_starts: list[int] = []

    def attach(self) -> None:
        try:
            info = self.channel.info
            if len(self.guest_addresses) < info.num_regions:
                raise VmmError(f"{self.name}: {info.num_regions} regions but only "
                               f"{len(self.guest_addresses)} guest addresses")
            if len(self.gsis) < info.num_irqs:
                raise VmmError(f"{self.name}: {info.num_irqs} interrupts but only "
                               f"{len(self.gsis)} guest lines")
            for r in range(info.num_regions):
                self._attach_region(r, self.channel.region_info(r))
            for i in range(info.num_irqs):
                self._attach_irq(i, self.channel.irq_info(i))
        except PlatpassError as err:
            self.detach()
            if isinstance(err, VmmError):
                raise
            raise VmmError(f"{self.name}: {err}") from err
        except BaseException:
            self.detach()
            raise

    def _attach_region(self, r: int, info: Any) -> None:
        base = self.guest_addresses[r]
        if base % PAGE_SIZE:
            raise VmmError(f"{self.name}: region {r} guest address {base:#x} is not "
                           "page-aligned")
        windows = _windows(info) if self.map_regions else []
        for off, length in windows:
            src = info.map_source
            mem = mmap.mmap(src.fd, length, flags=mmap.MAP_SHARED,
                            prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=src.offset + off)
            self._maps.append(mem)
            label = f"{self.name}.r{r}+{off:#x}"
            self._slots.append(self.vm.map_memory(base + off, mem, label=label))
            self.stats.mapped_bytes += length
            self.stats.slot_labels.append(label)
        handler = _TrappedRange(self, r, base)
        for off, length in _gaps(info.size, windows):
            self.vm.add_mmio(base + off, length, handler, f"{self.name}.r{r}")
            self._mmio_starts.append(base + off)
            self.stats.trapped_bytes += length

    def _attach_irq(self, i: int, info: Any) -> None:
        level = bool(info.flags & IrqInfoFlags.AUTOMASKED)
        trigger = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        resample = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) if level else None
        wired = WiredIrq(i, self.gsis[i], level, trigger, resample)
        self.irqs.append(wired)
        self.vm.irqfd(trigger, wired.gsi, resample)
        self.channel.set_irqs(i, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 1,
                              fds=(trigger,))
        if resample is not None:
            self.channel.set_irqs(i, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_UNMASK,
                                  0, 1, fds=(resample,))

    def detach(self) -> None:
        """Undo :meth:`attach` as far as it got: irqfds, device eventfds, slots, maps."""
        for wired in self.irqs:
            with contextlib.suppress(PlatpassError):
                self.channel.set_irqs(wired.index,
                                      IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_TRIGGER,
                                      0, 0)
            with contextlib.suppress(VmmError):
                self.vm.irqfd_remove(wired.trigger_fd, wired.gsi)
            os.close(wired.trigger_fd)
            if wired.resample_fd is not None:
                os.close(wired.resample_fd)
        self.irqs.clear()
        for slot in self._slots:
            with contextlib.suppress(VmmError):
                self.vm.unmap_memory(slot)
        self._slots.clear()
        for start in self._mmio_starts:
            self.vm.remove_mmio(start)
        self._mmio_starts.clear()
        for mem in self._maps:
            with contextlib.suppress(BufferError):
                mem.close()
        self._maps.clear()
