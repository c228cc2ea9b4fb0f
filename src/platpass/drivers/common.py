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
    #: The device can reset the whole system (a watchdog's reset output): it goes to a guest
    #: only when the user opts in for that device. Every ``watchdog`` family driver counts as
    #: such whatever this says.
    resets_system: ClassVar[bool] = False
    #: Why the device cannot be stopped once a guest starts it (empty: it can be): its
    #: effect outlives the VM, so it never goes to a guest. See :meth:`unstoppable_on`.
    unstoppable: ClassVar[str] = ""

    @classmethod
    def unstoppable_on(cls, node: DeviceNode) -> str:
        """Why this node's device cannot be stopped once started; default :attr:`unstoppable`."""
        return cls.unstoppable

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


def access_mask(trap: Trap, offset: int, size: int, bits: int) -> int:
    """The part of ``bits`` that an access ``[offset, offset+size)`` touches, access-aligned.

    ``bits`` is a little-endian bit mask over the trapped register(s), counted from
    ``trap.offset``. Bytes of the access outside the trap contribute nothing, so a wide or
    unaligned access that only partly overlaps a trap is masked only where it overlaps.
    """
    mask = 0
    for index in range(size):
        byte_offset = offset + index - trap.offset
        if 0 <= byte_offset < trap.size:
            mask |= ((bits >> (8 * byte_offset)) & 0xFF) << (8 * index)
    return mask


class MaskedRegisterDriver(PlatformDriver):
    """A driver whose trapped registers mix bits the guest needs with bits it must not set.

    Many controllers keep their slave-DMA request enables in the same register as their
    ordinary controls (i.MX UART ``UCR1``: ``TDMAEN`` beside ``UARTEN``). Trapping such a
    register read-as-zero would break the guest driver; mapping it would let the guest raise
    DMA requests. Here a trapped register named in :attr:`masked_bits` passes through except
    for those bits: they are cleared from every write and read back as zero. A trap named in
    :attr:`write_protected` reads through and ignores writes (a register the host still
    depends on, e.g. an oscillator selector feeding other blocks). Other traps keep the safe
    default (reads as zero, writes ignored). :meth:`reset` also clears the masked bits, so a
    device handed over with DMA requests enabled does not keep them.
    """

    #: Trap name -> little-endian mask (from the trap's first byte) of bits never passed on.
    masked_bits: ClassVar[Mapping[str, int]] = {}
    #: Trap names whose reads pass through and whose writes are dropped.
    write_protected: ClassVar[frozenset[str]] = frozenset()
    #: Masked traps whose *reads* pass through unmasked: a write-only register sharing its
    #: address with a read-only one (16550 FCR writes / IIR reads at the same offset).
    unmasked_reads: ClassVar[frozenset[str]] = frozenset()

    def trap_read(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                  size: int) -> int:
        """Masked registers read through with their masked bits as zero."""
        bits = self.masks().get(trap.name)
        if bits is not None and trap.name in self.unmasked_reads:
            return regs.read(region, offset, size)
        if bits is not None:
            return regs.read(region, offset, size) & ~access_mask(trap, offset, size, bits)
        if trap.name in self.write_protected:
            return regs.read(region, offset, size)
        return super().trap_read(regs, trap, region, offset, size)

    def trap_write(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                   size: int, value: int) -> None:
        """Masked registers take the write without their masked bits."""
        bits = self.masks().get(trap.name)
        if bits is not None:
            regs.write(region, offset, size, value & ~access_mask(trap, offset, size, bits))
            return
        super().trap_write(regs, trap, region, offset, size, value)

    def reset(self, regs: RegisterAccess) -> None:
        """Apply :attr:`reset_sequence`, then clear every masked bit that is still set.

        Write-only masked registers (:attr:`unmasked_reads`) cannot be read back; their
        quiescent value must come from :attr:`reset_sequence`.
        """
        super().reset(regs)
        self.clear_masked_bits(regs)

    def masks(self) -> Mapping[str, int]:
        """The masks in force for this node; default :attr:`masked_bits` as declared."""
        return self.masked_bits

    def clear_masked_bits(self, regs: RegisterAccess) -> None:
        """Clear every masked bit still set in a readable masked register."""
        masks = self.masks()
        for trap in self.traps + self.dma_traps:
            bits = masks.get(trap.name)
            if not bits or trap.name in self.unmasked_reads:
                continue
            current = regs.read(trap.region, trap.offset, trap.size)
            if current & bits:
                regs.write(trap.region, trap.offset, trap.size, current & ~bits)


def register_io_width(node: DeviceNode, default: int) -> int:
    """The node's ``reg-io-width`` (bytes per register access), or ``default``.

    8250-style bindings let a board say that its registers must be reached with 1-byte (or
    2-byte) accesses although they sit 4 bytes apart; quiescing writes must honour that.
    A malformed value falls back to ``default``.
    """
    raw = node.properties.get("reg-io-width")
    if raw is None or len(raw) != 4:
        return default
    width = int.from_bytes(raw, "big")
    return width if width in (1, 2, 4) else default
