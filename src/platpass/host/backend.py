"""The interface every host backend implements.

A backend owns the device's registers and its interrupt lines. The VFIO device layer above
it decides what the guest may touch (traps, sparse mmap) and implements VFIO interrupt
semantics; the backend only reports that a line fired and lets it be masked/unmasked at the
source. This split is what lets UIO (whose kernel handler disables the line until userspace
writes 1) and the simulated models (which know the line level) look the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from platpass.reactor import Reactor


@dataclass(frozen=True, slots=True)
class MapSource:
    """Where the pages of a region can be mapped from: ``mmap(fd, offset=offset)``.

    ``offset`` is the file offset of the region's first byte and is page-aligned.
    """

    fd: int
    offset: int


@dataclass(frozen=True, slots=True)
class BackendRegion:
    """One MMIO region as the backend exposes it.

    ``map_source`` is None when the backend cannot offer the pages for mapping at all.
    ``side_effect_ranges`` are ``(offset, size)`` ranges the backend itself needs trapped
    (the simulated models: registers whose accesses have side effects a plain memory
    mapping cannot produce); real hardware backends leave it empty.
    """

    size: int
    map_source: MapSource | None
    side_effect_ranges: tuple[tuple[int, int], ...] = ()


class IrqListener(Protocol):
    """Receives interrupt events from a backend (the VFIO device implements it)."""

    def irq_fired(self, index: int) -> None:
        """Line ``index`` fired: an edge, or a level line that is asserted and enabled."""
        ...


class Backend(Protocol):
    """What the VFIO device needs from a host backend.

    Interrupt contract: the backend calls ``listener.irq_fired(i)`` when line ``i`` fires
    while unmasked at the source. After :meth:`mask_irq` it reports nothing for that line.
    :meth:`unmask_irq` re-enables the line; a level line still asserted then fires again
    (synchronously, or later from the reactor), exactly as the GIC/UIO would.
    """

    @property
    def regions(self) -> tuple[BackendRegion, ...]:
        """The device's regions, in ``reg`` order."""
        ...

    @property
    def irq_count(self) -> int:
        """How many interrupt lines the device has."""
        ...

    def read(self, region: int, offset: int, size: int) -> int:
        """Read a register (1, 2, 4 or 8 bytes, naturally aligned; checked by the caller)."""
        ...

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        """Write a register (same rules as :meth:`read`)."""
        ...

    def attach(self, reactor: Reactor, listener: IrqListener) -> None:
        """Start delivering interrupt events to ``listener`` from ``reactor``."""
        ...

    def mask_irq(self, index: int) -> None:
        """Stop line ``index`` from firing (at the source)."""
        ...

    def unmask_irq(self, index: int) -> None:
        """Re-enable line ``index``; a still-asserted level line fires again."""
        ...

    def close(self) -> None:
        """Release fds and mappings; the device itself keeps its state."""
        ...
