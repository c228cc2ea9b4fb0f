"""Test bed for the VFIO device tests.

:class:`LineBackend` is a small but real implementation of the Backend protocol — registers
in a bytearray, interrupt lines whose level the test controls — for the pure IRQ and
region-routing semantics. Tests that behave like a guest driver use the simulated board's
models instead.
"""

from __future__ import annotations

import os
from typing import ClassVar

from platpass.drivers.common import PlatformDriver, RegisterWrite, Trap
from platpass.firmware.model import DeviceNode, Interrupt, IrqType, MmioRange, Trigger
from platpass.host.backend import BackendRegion, IrqListener, MapSource
from platpass.reactor import Reactor


class LineBackend:
    """Backend over a bytearray with controllable interrupt lines.

    Follows the Backend interrupt contract exactly: a line fires when it rises (edge) or is
    asserted (level) while enabled; ``unmask_irq`` re-fires a still-asserted level line
    synchronously. Edges that arrive while the line is masked are dropped, as a source
    with no latch would do (the VFIO layer does the latching).
    """

    def __init__(self, sizes: tuple[int, ...] = (0x1000,), irq_count: int = 1,
                 mappable: bool = True,
                 side_effects: tuple[tuple[tuple[int, int], ...], ...] = ()) -> None:
        self._mem = [bytearray(size) for size in sizes]
        self._memfd = os.memfd_create("linebackend") if mappable else None
        if self._memfd is not None:
            os.ftruncate(self._memfd, sum(sizes))
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self._regions = tuple(
            BackendRegion(
                size,
                MapSource(self._memfd, offsets[i]) if self._memfd is not None else None,
                side_effects[i] if i < len(side_effects) else (),
            )
            for i, size in enumerate(sizes)
        )
        self.asserted = [False] * irq_count
        self.enabled = [True] * irq_count
        self.listener: IrqListener | None = None
        self.log: list[tuple[str, int]] = []
        self.closed = False

    @property
    def regions(self) -> tuple[BackendRegion, ...]:
        return self._regions

    @property
    def irq_count(self) -> int:
        return len(self.asserted)

    def read(self, region: int, offset: int, size: int) -> int:
        self.log.append(("read", offset))
        return int.from_bytes(self._mem[region][offset:offset + size], "little")

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.log.append(("write", offset))
        self._mem[region][offset:offset + size] = value.to_bytes(size, "little")

    def attach(self, reactor: Reactor, listener: IrqListener) -> None:
        self.listener = listener

    def mask_irq(self, index: int) -> None:
        self.enabled[index] = False

    def unmask_irq(self, index: int) -> None:
        self.enabled[index] = True
        if self.asserted[index]:
            self._fire(index)

    def close(self) -> None:
        self.closed = True
        if self._memfd is not None:
            os.close(self._memfd)
            self._memfd = None

    # -- what the device does ----------------------------------------------------------

    def raise_line(self, index: int) -> None:
        """Assert a level line (fires if enabled)."""
        self.asserted[index] = True
        if self.enabled[index]:
            self._fire(index)

    def lower_line(self, index: int) -> None:
        """De-assert a level line."""
        self.asserted[index] = False

    def pulse(self, index: int) -> None:
        """One edge (fires if enabled, lost otherwise)."""
        if self.enabled[index]:
            self._fire(index)

    def _fire(self, index: int) -> None:
        assert self.listener is not None
        self.listener.irq_fired(index)


def make_node(triggers: tuple[Trigger, ...] = (Trigger.LEVEL_HIGH,),
              regions: tuple[tuple[int, int], ...] = ((0x9000000, 0x1000),),
              compatible: tuple[str, ...] = ("test,line-device",),
              properties: dict[str, bytes] | None = None) -> DeviceNode:
    """A device node as firmware would describe it (built by hand: no DT needed here)."""
    return DeviceNode(
        path="/soc/test@9000000",
        compatible=compatible,
        status="okay",
        is_mmio=True,
        regions=tuple(MmioRange(a, s) for a, s in regions),
        interrupts=tuple(
            Interrupt("/intc", (0, 10 + i, 4), IrqType.SPI, 10 + i, t)
            for i, t in enumerate(triggers)
        ),
        properties=properties or {},
    )


def drain(fd: int) -> int:
    """The eventfd's counter (0 when unsignalled), resetting it."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class QuietDriver(PlatformDriver):
    """A driver with one trapped register and a one-step reset, for routing tests.

    Its trap at 0x48 (four bytes, like PL011 UARTDMACR) reads as zero and ignores writes
    (the base class's behaviour); its reset clears the word at 0x38.
    """

    name = "test-quiet"
    compatibles = ("test,line-device",)
    family = "uart"
    evidence = "test device"
    traps: ClassVar[tuple[Trap, ...]] = (Trap(0, 0x48, 4, "DMACR", "DMA enables"),)
    reset_sequence: ClassVar[tuple[RegisterWrite, ...]] = (RegisterWrite(0, 0x38, 4, 0),)


def open_fds() -> set[int]:
    """The fds this process has open now."""
    listed = {int(name) for name in os.listdir("/proc/self/fd")}
    # listdir's own directory fd is listed too, and is closed by now: drop it.
    alive = set()
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        alive.add(fd)
    return alive
