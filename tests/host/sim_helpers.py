"""Shared helpers for the simulated-board tests: an interrupt recorder and device access."""

from __future__ import annotations

from platpass.host.simulated.backend import SimulatedBackend
from platpass.reactor import EpollReactor


class IrqRecorder:
    """An IrqListener that records every event and, like VFIO, automasks level lines."""

    def __init__(self, backend: SimulatedBackend, *, automask: bool = True) -> None:
        self.backend = backend
        self.fired: list[int] = []
        self.automask = automask
        self._reactor = EpollReactor()
        backend.attach(self._reactor, self)

    def irq_fired(self, index: int) -> None:
        self.fired.append(index)
        if self.automask and self.backend.irq_is_level[index]:
            self.backend.mask_irq(index)

    def take(self) -> list[int]:
        fired, self.fired = self.fired, []
        return fired

    def close(self) -> None:
        self._reactor.close()


class Regs:
    """Register access the way a guest driver does it: fixed width, region 0."""

    def __init__(self, backend: SimulatedBackend, width: int = 4) -> None:
        self.backend = backend
        self.width = width

    def __getitem__(self, offset: int) -> int:
        return self.backend.read(0, offset, self.width)

    def __setitem__(self, offset: int, value: int) -> None:
        self.backend.write(0, offset, self.width, value)
