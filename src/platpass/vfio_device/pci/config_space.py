"""A PCI 3.0 type-0 configuration header for a function that has memory BARs, INTx and no
capabilities — what a VFIO PCI client reads from region 7 (``VFIO_PCI_CONFIG_REGION_INDEX``).

The header is emulated byte by byte with a writable mask, as a real function decodes it
(PCI Local Bus Specification 3.0, chapter 6):

* vendor/device/revision/class/subsystem/header type/interrupt pin are read-only;
* command: only Memory Space Enable (bit 1) and Interrupt Disable (bit 10) are writable.
  I/O Space Enable reads 0 (no I/O BARs) and Bus Master Enable reads 0: the device cannot
  master the bus, and saying so in the one register a guest checks is the honest answer;
* status: bit 3 (Interrupt Status) follows the INTx line (supplied by the caller), bit 4
  (Capabilities List) is 0 — no capability list, so no MSI/MSI-X/PM/PCIe structures;
* BARs: 32-bit, non-prefetchable memory BARs of power-of-two sizes; the size is found with
  the all-ones probe (the low ``log2(size)`` bits read as zero); absent BARs read 0 and
  ignore writes; the expansion ROM BAR is absent;
* interrupt line (0x3C) is a scratch byte for the guest; cache line size and latency timer
  are hardwired to 0 (allowed for a function that never masters the bus);
* 0x40-0xFF (device-specific) read as 0 and ignore writes.

Pure logic: no I/O. Accesses are 1, 2 or 4 bytes, naturally aligned, inside the 256 bytes
(anything else is EINVAL, as vfio-pci refuses it).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from platpass.errors import VfioError

#: Size of a conventional PCI configuration space.
CONFIG_SIZE = 256
#: Six BAR slots in a type-0 header.
BAR_SLOTS = 6
#: Smallest memory BAR the specification allows (PCI 3.0 §6.2.5.1).
MIN_MEMORY_BAR = 16


class Reg(IntEnum):
    """Type-0 header offsets."""

    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION = 0x08
    CLASS_CODE = 0x09  # prog-if, subclass, base class (3 bytes)
    CACHE_LINE_SIZE = 0x0C
    LATENCY_TIMER = 0x0D
    HEADER_TYPE = 0x0E
    BIST = 0x0F
    BAR0 = 0x10
    CARDBUS_CIS = 0x28
    SUBSYSTEM_VENDOR_ID = 0x2C
    SUBSYSTEM_ID = 0x2E
    ROM_ADDRESS = 0x30
    CAPABILITIES = 0x34
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D
    MIN_GNT = 0x3E
    MAX_LAT = 0x3F


class Command(IntFlag):
    """Command register bits this header implements."""

    IO = 1 << 0
    MEMORY = 1 << 1
    MASTER = 1 << 2
    INTX_DISABLE = 1 << 10


class Status(IntFlag):
    """Status register bits this header implements."""

    INTERRUPT = 1 << 3
    CAP_LIST = 1 << 4


#: The command bits a guest may change.
COMMAND_WRITABLE = Command.MEMORY | Command.INTX_DISABLE
#: Interrupt pin value for INTA#.
PIN_INTA = 1


@dataclass(frozen=True, slots=True)
class Identity:
    """What a driver matches on: IDs, class code (base<<16 | sub<<8 | prog-if), revision."""

    vendor: int
    device: int
    subsystem_vendor: int
    subsystem: int
    class_code: int
    revision: int = 0

    def __post_init__(self) -> None:
        for name in ("vendor", "device", "subsystem_vendor", "subsystem"):
            if not 0 <= getattr(self, name) <= 0xFFFF:
                raise ValueError(f"{name} {getattr(self, name):#x} is not 16 bits")
        if not 0 <= self.class_code <= 0xFFFFFF or not 0 <= self.revision <= 0xFF:
            raise ValueError("class code is 24 bits, revision 8")
        if self.vendor == 0xFFFF:
            raise ValueError("vendor 0xffff means 'no function here'")

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


def bar_size_for(region_size: int) -> int:
    """The BAR size that holds a region: the next power of two, at least 16 bytes."""
    if region_size <= 0:
        raise ValueError(f"region size {region_size} cannot back a BAR")
    return max(MIN_MEMORY_BAR, 1 << (region_size - 1).bit_length())


class ConfigSpace:
    """The emulated header of one function (see the module docstring).

    ``bar_sizes`` lists BAR0.. (at most six, each a power of two >= 16, 0 for absent).
    ``interrupt_status`` returns whether the INTx line is asserted (status bit 3).
    ``on_command`` is called with (old, new) command values after a write changed them.
    """

    def __init__(self, identity: Identity, bar_sizes: Sequence[int], *,
                 interrupt_status: Callable[[], bool] = lambda: False,
                 on_command: Callable[[int, int], None] | None = None) -> None:
        if len(bar_sizes) > BAR_SLOTS:
            raise ValueError(f"{len(bar_sizes)} BARs: a type-0 header has {BAR_SLOTS}")
        for size in bar_sizes:
            if size and (size < MIN_MEMORY_BAR or size & (size - 1)):
                raise ValueError(f"BAR size {size:#x} is not a power of two >= 16")
        self.identity = identity
        self.bar_sizes = tuple(bar_sizes) + (0,) * (BAR_SLOTS - len(bar_sizes))
        self._interrupt_status = interrupt_status
        self._on_command = on_command
        self._bytes = bytearray(CONFIG_SIZE)
        self._writable = bytearray(CONFIG_SIZE)
        self._build()

    def _build(self) -> None:
        ident = self.identity
        b = self._bytes
        struct.pack_into("<HH", b, Reg.VENDOR_ID, ident.vendor, ident.device)
        b[Reg.REVISION] = ident.revision
        b[Reg.CLASS_CODE:Reg.CLASS_CODE + 3] = ident.class_code.to_bytes(3, "little")
        b[Reg.HEADER_TYPE] = 0x00  # type 0, single function
        struct.pack_into("<HH", b, Reg.SUBSYSTEM_VENDOR_ID, ident.subsystem_vendor,
                         ident.subsystem)
        b[Reg.INTERRUPT_PIN] = PIN_INTA
        struct.pack_into("<H", self._writable, Reg.COMMAND, int(COMMAND_WRITABLE))
        self._writable[Reg.INTERRUPT_LINE] = 0xFF
        for slot, size in enumerate(self.bar_sizes):
            if size:  # memory, 32-bit, non-prefetchable: type bits all 0
                mask = ~(size - 1) & 0xFFFFFFF0
                struct.pack_into("<I", self._writable, Reg.BAR0 + 4 * slot, mask)

    # -- state a device needs -----------------------------------------------------------

    @property
    def command(self) -> int:
        """The command register."""
        return int(struct.unpack_from("<H", self._bytes, Reg.COMMAND)[0])

    @property
    def memory_enabled(self) -> bool:
        """Memory Space Enable: BAR accesses are decoded."""
        return bool(self.command & Command.MEMORY)

    @property
    def intx_disabled(self) -> bool:
        """Interrupt Disable: the function must not assert INTx."""
        return bool(self.command & Command.INTX_DISABLE)

    def bar_address(self, slot: int) -> int:
        """The address programmed into BAR ``slot`` (type bits removed)."""
        return int(struct.unpack_from("<I", self._bytes, Reg.BAR0 + 4 * slot)[0]) & ~0xF

    def reset(self, *, notify: bool = True) -> None:
        """Power-on state: command cleared, BARs and interrupt line zeroed. ``notify``
        reports a command change to ``on_command`` (off when the caller resets the
        interrupt state itself)."""
        old = self.command
        self._bytes = bytearray(CONFIG_SIZE)
        self._build()
        if old and notify and self._on_command is not None:
            self._on_command(old, 0)

    # -- accesses -----------------------------------------------------------------------

    @staticmethod
    def _check(offset: int, size: int) -> None:
        if size not in (1, 2, 4) or offset < 0 or offset % size or offset + size > CONFIG_SIZE:
            raise VfioError(errno.EINVAL, f"config access of {size} bytes at {offset:#x}: "
                            "need 1/2/4 bytes, naturally aligned, inside 256 bytes")

    def read(self, offset: int, size: int) -> int:
        """A config read (little-endian value). EINVAL for a bad offset/size."""
        self._check(offset, size)
        value = int.from_bytes(self._bytes[offset:offset + size], "little")
        status = Reg.STATUS
        if offset <= status < offset + size and self._interrupt_status():
            value |= int(Status.INTERRUPT) << (8 * (status - offset))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A config write: only writable bits change. EINVAL for a bad offset/size/value."""
        self._check(offset, size)
        if not 0 <= value < 1 << (8 * size):
            raise VfioError(errno.EINVAL, f"value {value:#x} does not fit in {size} bytes")
        old = self.command
        for i in range(size):
            at = offset + i
            mask = self._writable[at]
            byte = (value >> (8 * i)) & 0xFF
            self._bytes[at] = (self._bytes[at] & ~mask) | (byte & mask)
        new = self.command
        if new != old and self._on_command is not None:
            self._on_command(old, new)

    def snapshot(self) -> bytes:
        """The 256 bytes as a read of each byte would return them."""
        return bytes(self.read(at, 1) for at in range(CONFIG_SIZE))
