"""How a device's registers and interrupts reach this process: one opener per backend."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from platpass.errors import HostError
from platpass.firmware.model import DeviceNode
from platpass.host.backend import Backend
from platpass.host.simulated.clock import ModelClock
from platpass.reactor import Reactor

#: Opens the backend of a node on a reactor (HostError when it cannot).
BackendOpener = Callable[[DeviceNode, Reactor], Backend]

#: The kernel backends: each module provides ``open_backend(node, reactor)``. ``kmod``
#: (the project's kernel module) is kernel VFIO with an emulated IOMMU: the same uAPI.
_KERNEL_BACKEND_MODULES: dict[str, str] = {
    "kmod": "platpass.host.vfio_kernel",
    "uio": "platpass.host.uio",
    "vfio": "platpass.host.vfio_kernel",
}

#: Every backend name a plan may choose.
BACKENDS = ("sim", *_KERNEL_BACKEND_MODULES)


def sim_opener(clock: Callable[[], ModelClock] | None = None, *,
               memfd: Callable[[], int] | None = None) -> BackendOpener:
    """The simulated board's opener; each model runs on ``clock()`` (e.g. a
    :class:`~platpass.host.simulated.clock.ManualClock`) or else on the reactor's clock,
    with its mirror in the fd ``memfd()`` returns when given (a ``serve --workers``
    supervisor's, which outlives the worker)."""

    def open_sim(node: DeviceNode, reactor: Reactor) -> Backend:
        from platpass.host.simulated.board import open_sim_backend

        return open_sim_backend(node, reactor, clock=None if clock is None else clock(),
                                memfd=None if memfd is None else memfd())

    return open_sim


def backend_opener(name: str) -> BackendOpener:
    """The opener for backend ``name``; HostError saying why when it is unavailable."""
    if name == "sim":
        return sim_opener()
    module_name = _KERNEL_BACKEND_MODULES.get(name)
    if module_name is None:
        raise HostError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise HostError(f"backend {name!r} is not available: {err}") from err
    opener = getattr(module, "open_backend", None)
    if opener is None:
        raise HostError(f"backend {name!r} is not available yet: {module_name} has no "
                        "open_backend(node, reactor)")
    return cast(BackendOpener, opener)


__all__ = ["BACKENDS", "BackendOpener", "backend_opener", "sim_opener"]
