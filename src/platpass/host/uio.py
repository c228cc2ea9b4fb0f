"""UIO backend: a device bound to ``uio_pdrv_genirq``, reached through ``/dev/uioN``.

UIO needs no IOMMU and does not taint the kernel, which is why platpass prefers it. Each
memory map ``N`` of the device is mapped from ``/dev/uioN`` at file offset ``N * pagesize``;
register accesses are single loads/stores through a typed ``memoryview`` on that mapping.

The interrupt is bridged to VFIO semantics on the process's one reactor (no thread, no
polling): the UIO fd turns readable when the kernel handler ran; reading the 4-byte event
count acknowledges it and ``listener.irq_fired(0)`` follows. uio_pdrv_genirq's handler has
already disabled the line by then, which is exactly VFIO's automask for a level line: it
stays off until :meth:`UioBackend.unmask_irq` writes the 4-byte ``1`` (irqcontrol), and the
kernel fires again at once if the device still asserts it. An edge line is re-enabled by
the backend right away (VFIO does not automask edges) unless the user masked it.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from platpass.errors import HostError
from platpass.firmware.model import DeviceNode
from platpass.host.backend import BackendRegion, IrqListener, MapSource
from platpass.reactor import Reactor

PAGE_SIZE = mmap.PAGESIZE
_UIO_NAME = re.compile(r"uio\d+")
_IRQ_ON = struct.pack("=I", 1)
_IRQ_OFF = struct.pack("=I", 0)
_FORMATS: dict[int, Literal["B", "H", "I", "Q"]] = {1: "B", 2: "H", 4: "I", 8: "Q"}
_log = logging.getLogger(__name__)


class MappedRegisters:
    """Registers in an ``mmap``: each access is one naturally aligned load or store.

    ``memoryview.cast`` makes CPython copy exactly ``size`` bytes with one access, which is
    what device registers need (a byte-wise copy of a 32-bit register would be four bus
    reads, and some registers clear on read).
    """

    def __init__(self, mapping: mmap.mmap, start: int, size: int) -> None:
        self._mapping = mapping
        self._view = memoryview(mapping)[start : start + size]
        self.size = size
        self._typed = {width: self._view.cast(fmt) for width, fmt in _FORMATS.items()
                       if size % width == 0}

    def read(self, offset: int, size: int) -> int:
        """Read ``size`` bytes at ``offset`` (aligned, inside; checked by the caller)."""
        return int(self._typed[size][offset // size])

    def write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``offset``."""
        self._typed[size][offset // size] = value & ((1 << (8 * size)) - 1)

    def close(self) -> None:
        """Drop the views, then the mapping (a live view would keep it from closing)."""
        for view in self._typed.values():
            view.release()
        self._typed.clear()
        self._view.release()
        self._mapping.close()


@dataclass(frozen=True, slots=True)
class UioMap:
    """One ``/sys/class/uio/uioN/maps/mapM`` entry."""

    index: int
    addr: int
    size: int
    offset: int  # offset of ``addr`` inside its page


def _read_hex(path: Path) -> int:
    return int(path.read_text().strip(), 16)


def uio_name_for_device(device_dir: Path) -> str:
    """The ``uioN`` of a bound platform device (``<device>/uio/uioN``).

    Raises HostError when the device has no UIO instance (not bound to a UIO driver).
    """
    try:
        names = sorted(p.name for p in (device_dir / "uio").iterdir()
                       if _UIO_NAME.fullmatch(p.name))
    except OSError as err:
        raise HostError(f"{device_dir.name}: no UIO instance ({device_dir / 'uio'}: "
                        f"{err.strerror}); is it bound to uio_pdrv_genirq?") from err
    if len(names) != 1:
        raise HostError(f"{device_dir.name}: expected one uioN, found {names}")
    return names[0]


def uio_maps(sysfs_uio: Path) -> list[UioMap]:
    """The memory maps of a UIO instance, in index order."""
    maps = []
    maps_dir = sysfs_uio / "maps"
    index = 0
    while (maps_dir / f"map{index}").is_dir():
        entry = maps_dir / f"map{index}"
        maps.append(UioMap(index, _read_hex(entry / "addr"), _read_hex(entry / "size"),
                           _read_hex(entry / "offset")))
        index += 1
    return maps


class UioBackend:
    """:class:`platpass.host.backend.Backend` over ``/dev/uioN``.

    ``level_triggered`` says, per line, whether the line is level (automasked until unmask)
    or edge (re-enabled at once); UIO has at most one line.
    """

    def __init__(self, uio: str, *, level_triggered: Sequence[bool] = (True,),
                 sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> None:
        if not _UIO_NAME.fullmatch(uio):
            raise HostError(f"not a UIO device name: {uio!r}")
        self.name = uio
        self._sysfs_uio = sysfs / "class" / "uio" / uio
        self._level = bool(level_triggered[0]) if level_triggered else True
        maps = uio_maps(self._sysfs_uio)
        if not maps:
            raise HostError(f"{uio}: the UIO device has no memory maps")
        self._fd = os.open(dev / uio, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self._windows: list[MappedRegisters] = []
        regions = []
        try:
            for m in maps:
                length = -(-(m.offset + m.size) // PAGE_SIZE) * PAGE_SIZE
                mapping = mmap.mmap(self._fd, length, mmap.MAP_SHARED,
                                    mmap.PROT_READ | mmap.PROT_WRITE,
                                    offset=m.index * PAGE_SIZE)
                self._windows.append(MappedRegisters(mapping, m.offset, m.size))
                source = MapSource(self._fd, m.index * PAGE_SIZE) if m.offset == 0 else None
                regions.append(BackendRegion(m.size, source))
        except OSError as err:
            self.close()
            raise HostError(f"{uio}: mapping failed: {err}") from err
        self._regions = tuple(regions)
        self._irq_count = self._probe_irq()
        self._reactor: Reactor | None = None
        self._listener: IrqListener | None = None
        self._masked = False
        self._enabled = True
        self.events = 0  # the kernel's event count at the last interrupt read
        #: Why the interrupt line stopped working (the UIO device went away), or None.
        self.irq_failure: OSError | None = None

    @classmethod
    def for_device(cls, device_dir: Path, *, level_triggered: Sequence[bool] = (True,),
                   sysfs: Path = Path("/sys"), dev: Path = Path("/dev")) -> UioBackend:
        """Open the UIO instance of a platform device directory in sysfs."""
        return cls(uio_name_for_device(device_dir), level_triggered=level_triggered,
                   sysfs=sysfs, dev=dev)

    def _probe_irq(self) -> int:
        """1 if the instance has an interrupt with irqcontrol, else 0 (UIO reports EIO /
        ENOSYS on the irqcontrol write). Writing 1 leaves the line enabled, as after probe."""
        try:
            os.write(self._fd, _IRQ_ON)
        except OSError as err:
            if err.errno in (errno.EIO, errno.ENOSYS):
                return 0
            raise HostError(f"{self.name}: irqcontrol write failed: {err}") from err
        return 1

    # ------------------------------------------------------------------ Backend
    @property
    def regions(self) -> tuple[BackendRegion, ...]:
        return self._regions

    @property
    def irq_count(self) -> int:
        return self._irq_count

    @property
    def fd(self) -> int:
        """The ``/dev/uioN`` fd (the map sources point at it)."""
        return self._fd

    def read(self, region: int, offset: int, size: int) -> int:
        return self._windows[region].read(offset, size)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self._windows[region].write(offset, size, value)

    def attach(self, reactor: Reactor, listener: IrqListener) -> None:
        self._reactor, self._listener = reactor, listener
        if self._irq_count:
            reactor.add_reader(self._fd, self._on_readable)

    def mask_irq(self, index: int) -> None:
        self._check_index(index)
        self._check_alive()
        self._masked = True
        if self._enabled:
            self._irqcontrol(_IRQ_OFF)
            self._enabled = False

    def unmask_irq(self, index: int) -> None:
        self._check_index(index)
        self._check_alive()
        self._masked = False
        # Always write: the kernel may have disabled the line since we last looked.
        self._irqcontrol(_IRQ_ON)
        self._enabled = True

    def close(self) -> None:
        if self._reactor is not None:
            self._reactor.remove_reader(self._fd)
            self._reactor = None
        for window in self._windows:
            window.close()
        self._windows.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # ------------------------------------------------------------------ internals
    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._irq_count:
            raise HostError(f"{self.name}: no interrupt line {index}")

    def _irqcontrol(self, value: bytes) -> None:
        try:
            os.write(self._fd, value)
        except OSError as err:
            raise HostError(f"{self.name}: irqcontrol write failed: {err}") from err

    def _check_alive(self) -> None:
        if self.irq_failure is not None:
            raise HostError(f"{self.name}: the interrupt line is gone: {self.irq_failure}")

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, 4)
        except BlockingIOError:
            return  # another reader consumed it; the count did not move for us
        except OSError as err:
            # The device was removed under us (or the fd broke). Raising here would unwind
            # the reactor and stop every other device of the process: retire this line
            # instead, say so once, and let later mask/unmask calls report it as an error.
            self.irq_failure = err
            if self._reactor is not None:
                self._reactor.remove_reader(self._fd)
            _log.error("%s: reading the event count failed, interrupt line retired: %s",
                       self.name, err, extra={"uio": self.name, "errno": err.errno})
            return
        self.events = struct.unpack("=I", data)[0]
        self._enabled = False  # uio_pdrv_genirq disabled the line in its handler
        if not self._level and not self._masked:
            self._irqcontrol(_IRQ_ON)
            self._enabled = True
        if self._listener is not None:
            self._listener.irq_fired(0)


def open_backend(node: DeviceNode, reactor: Reactor) -> UioBackend:
    """Open the UIO instance of the device the kernel created for ``node`` (already bound
    to uio_pdrv_genirq, e.g. by ``platpass assign``). ``reactor`` is accepted for the
    opener signature; interrupts start flowing at :meth:`UioBackend.attach`."""
    from platpass.host.sysfs import device_for_node

    device = device_for_node(node.path)
    levels = [irq.trigger.is_level for irq in node.interrupts] or [True]
    return UioBackend.for_device(device.path, level_triggered=levels)
