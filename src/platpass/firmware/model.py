"""Plain data describing a device as firmware tells it: the contract between layers.

The firmware layer produces these; drivers, the VFIO device, the guest device-tree transform
and the CLI consume them. They are frozen so that no later layer can quietly rewrite what
firmware said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Trigger(StrEnum):
    """Interrupt trigger type, as GIC specifiers and the generic binding encode it."""

    EDGE_RISING = "edge-rising"
    EDGE_FALLING = "edge-falling"
    EDGE_BOTH = "edge-both"
    LEVEL_HIGH = "level-high"
    LEVEL_LOW = "level-low"
    UNKNOWN = "unknown"

    @property
    def is_level(self) -> bool:
        """Level lines are automasked by VFIO; edges never are."""
        return self in (Trigger.LEVEL_HIGH, Trigger.LEVEL_LOW)


class IrqType(StrEnum):
    """Kind of interrupt specifier: GIC shared/private peripheral, or another controller's."""

    SPI = "SPI"
    PPI = "PPI"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class MmioRange:
    """One ``reg`` entry translated to a CPU physical address."""

    address: int
    size: int
    name: str | None = None

    @property
    def end(self) -> int:
        """First address past the range."""
        return self.address + self.size


@dataclass(frozen=True, slots=True)
class Interrupt:
    """One interrupt resolved to its controller (after ``interrupt-map`` translation).

    ``number`` is the controller-local number: for a GIC, the SPI/PPI number as written in
    the specifier (not offset by 32); for other controllers the first specifier cell.
    """

    controller: str
    specifier: tuple[int, ...]
    type: IrqType
    number: int
    trigger: Trigger
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Clock:
    """One ``clocks`` entry resolved to its provider; ``rate`` in Hz when firmware says it."""

    provider: str
    specifier: tuple[int, ...]
    name: str | None = None
    rate: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A device node as firmware describes it, with everything resolved that could be.

    ``is_mmio`` is False for nodes that are not memory-mapped devices (CPUs, children of
    I2C/SPI/MDIO buses, clocks and regulators without ``reg``...). ``problems`` lists what
    could not be resolved for this node (broken phandle, malformed property); the node is
    still reported so that one bad node never hides the rest of the tree.
    ``properties`` holds the raw property values, for rules and transforms that need them.
    """

    path: str
    compatible: tuple[str, ...]
    status: str
    is_mmio: bool
    regions: tuple[MmioRange, ...] = ()
    interrupts: tuple[Interrupt, ...] = ()
    clocks: tuple[Clock, ...] = ()
    properties: dict[str, bytes] = field(default_factory=dict, compare=False, hash=False)
    problems: tuple[str, ...] = ()
    phandle: int | None = None

    @property
    def enabled(self) -> bool:
        """``status`` absent, ``okay`` or ``ok`` means the device is in use."""
        return self.status in ("okay", "ok")

    @property
    def name(self) -> str:
        """Last path component, e.g. ``serial@ff1a0000``."""
        return self.path.rsplit("/", 1)[-1] or "/"

    @property
    def is_primecell(self) -> bool:
        """AMBA primecells get ``VFIO_DEVICE_FLAGS_AMBA`` instead of ``_PLATFORM``."""
        return "arm,primecell" in self.compatible
