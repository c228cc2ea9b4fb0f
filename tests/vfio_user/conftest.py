"""Real devices for the vfio-user tests: simulated-board models behind a VfioDevice."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import default_registry
from platpass.firmware.model import DeviceNode
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.iommu import EmulatedIommu


def board_node(compatible: str) -> DeviceNode:
    """The first node of the simulated board with ``compatible``."""
    for node in load_board().devices():
        if compatible in node.compatible:
            return node
    raise LookupError(compatible)


def driver_for(node: DeviceNode) -> PlatformDriver:
    """The registry's driver for ``node``; until the register-level drivers exist, a bare
    declaration (no traps, no reset) so the protocol layer can still be exercised."""
    driver = default_registry().match(node.compatible)
    if driver is None:
        declared = type("DeclaredOnly", (PlatformDriver,), {
            "name": "declared-only", "compatibles": tuple(node.compatible),
            "family": "test", "evidence": "test declaration"})
        return declared(node)
    return driver(node)


def open_device(reactor: EpollReactor, compatible: str, *, deny_dma: bool = False
                ) -> VfioDevice:
    node = board_node(compatible)
    return VfioDevice(node, driver_for(node), open_sim_backend(node, reactor), reactor,
                      EmulatedIommu(deny=deny_dma))


@pytest.fixture
def reactor() -> Iterator[EpollReactor]:
    loop = EpollReactor()
    yield loop
    loop.close()


@pytest.fixture
def make_device(reactor: EpollReactor) -> Iterator[Callable[..., VfioDevice]]:
    devices: list[VfioDevice] = []

    def make(compatible: str = "arm,pl031", **kwargs: object) -> VfioDevice:
        device = open_device(reactor, compatible, **kwargs)  # type: ignore[arg-type]
        devices.append(device)
        return device

    yield make
    for device in devices:
        device.close()


def open_fds() -> set[int]:
    """The process's open fds (from /proc/self/fd), for leak checks."""
    return {int(name) for name in os.listdir("/proc/self/fd")}
