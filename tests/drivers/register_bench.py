"""Shared pieces of the register-level driver tests: board nodes, a model behind a backend,
and a dead-bus register space (the real failure mode of an unclocked device)."""

from __future__ import annotations

from dataclasses import dataclass, field

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import default_registry
from platpass.firmware.model import DeviceNode
from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.host.simulated.clock import ManualClock
from platpass.reactor import EpollReactor

SOC = "/soc@9000000"


@dataclass
class Bench:
    """One board device: its node, registry driver, simulated backend and clock."""

    node: DeviceNode
    driver: PlatformDriver
    backend: SimulatedBackend
    clock: ManualClock
    reactor: EpollReactor

    def close(self) -> None:
        if not self.backend.closed:
            self.backend.close()
        self.reactor.close()


def open_bench(path: str) -> Bench:
    """The board node at ``path`` with the driver the registry picks and its model."""
    node = load_board().node(path)
    driver_cls = default_registry(plugins=False).match(node.compatible)
    assert driver_cls is not None, f"no driver for {node.compatible}"
    reactor = EpollReactor()
    clock = ManualClock()
    backend = open_sim_backend(node, reactor, clock)
    return Bench(node, driver_cls(node), backend, clock, reactor)


@dataclass
class DeadBus:
    """A register space where every read returns ``value`` and writes vanish: what a
    device whose clock is gated looks like. Counts accesses so tests can bound them."""

    value: int
    reads: int = 0
    writes: list[tuple[int, int]] = field(default_factory=list)

    def read(self, region: int, offset: int, size: int) -> int:
        self.reads += 1
        return self.value & ((1 << (8 * size)) - 1)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, value))
