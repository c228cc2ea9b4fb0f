"""Shared platform code for device-specific drivers (the "vfio-platform common" of platpass).

A driver is the piece of knowledge no generic code has: that its IP block cannot master the
bus. It also says which registers must never reach the guest directly (trapped, with the
behaviour of a trapped access), how to bring the device to a quiescent state, and what the
guest's device-tree node must say. Drivers are declared as classes; the registry
(:mod:`platpass.drivers.registry`) matches them on ``compatible``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol

from platpass.firmware.model import DeviceNode


class RegisterAccess(Protocol):
    """How a driver reaches the device's real registers (a host backend provides it)."""

    def read(self, region: int, offset: int, size: int) -> int:
        """Read ``size`` bytes at ``offset`` of region ``region`` (little-endian value)."""
        ...

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        """Write ``size`` bytes at ``offset`` of region ``region``."""
        ...


@dataclass(frozen=True, slots=True)
class Trap:
    """A register range the guest must not reach directly.

    ``why`` is shown to users (``platpass scan``) and in the guest-facing sparse-mmap
    layout: the page holding a trap is never mapped into the guest.
    """

    region: int
    offset: int
    size: int
    name: str
    why: str

    def covers(self, region: int, offset: int, size: int) -> bool:
        """True when the access ``[offset, offset+size)`` touches this trap."""
        return (
            region == self.region
            and offset < self.offset + self.size
            and self.offset < offset + size
        )


@dataclass(frozen=True, slots=True)
class RegisterWrite:
    """One step of a declarative reset sequence."""

    region: int
    offset: int
    size: int
    value: int


class PlatformDriver:
    """Base class of every device-specific driver.

    Subclasses set the class attributes; register-level drivers also override
    :meth:`trap_read`, :meth:`trap_write` and :meth:`reset`. The defaults give trapped
    registers read-as-zero/writes-ignored behaviour, which is the safe choice for a register
    that could enable DMA requests.
    """

    #: Short unique name, e.g. ``"arm-pl011"``.
    name: ClassVar[str]
    #: ``compatible`` strings this driver claims (exact matches).
    compatibles: ClassVar[tuple[str, ...]]
    #: Device family: ``uart``, ``rtc``, ``gpio``, ``watchdog``, ``i2c``, ``spi``, ``pwm``,
    #: ``adc``...
    family: ClassVar[str]
    #: The driver's declaration that the IP block has no bus-master interface. A driver that
    #: sets this False only documents a known bus master: such devices are always refused.
    cannot_master_bus: ClassVar[bool] = True
    #: The public evidence for ``cannot_master_bus``: the Linux driver or DT binding showing
    #: that the IP block only has a slave register interface (and at most slave-DMA
    #: handshake lines).
    evidence: ClassVar[str]
    #: Registers that must be trapped whatever the node says.
    traps: ClassVar[tuple[Trap, ...]] = ()
    #: Extra traps applied only when the node has ``dmas`` (slave-DMA request enables).
    dma_traps: ClassVar[tuple[Trap, ...]] = ()
    #: Register writes that bring the device to a quiescent state (interrupts off,
    #: outputs idle) - applied on open, release and VFIO RESET.
    reset_sequence: ClassVar[tuple[RegisterWrite, ...]] = ()
    #: Guest-node properties this driver drops beyond the common host-only list.
    guest_drop_properties: ClassVar[tuple[str, ...]] = ()

    def __init__(self, node: DeviceNode) -> None:
        self.node = node

    def active_traps(self) -> tuple[Trap, ...]:
        """Traps in force for this node: ``dma_traps`` join in when the node has ``dmas``."""
        if "dmas" in self.node.properties:
            return self.traps + self.dma_traps
        return self.traps

    def trap_read(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                  size: int) -> int:
        """Value a guest reads from a trapped register; default: reads as zero."""
        return 0

    def trap_write(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                   size: int, value: int) -> None:
        """What a guest write to a trapped register does; default: ignored."""

    def reset(self, regs: RegisterAccess) -> None:
        """Quiesce the device; default: apply :attr:`reset_sequence`."""
        for step in self.reset_sequence:
            regs.write(step.region, step.offset, step.size, step.value)

    def guest_properties(self, properties: Mapping[str, bytes]) -> dict[str, bytes]:
        """The guest node's properties after the common transform; default: unchanged."""
        return dict(properties)
