"""Kernel VFIO backend: a device bound to vfio-platform / vfio-amba, reached through
``/dev/vfio`` (an IOMMU group or, in no-IOMMU mode, ``noiommu-N``).

``uapi`` holds every ioctl number and C layout, ``syscalls`` the thin shim that all kernel
calls go through (replaceable in tests, errors wrapped with errno and context), ``backend``
the :class:`platpass.host.backend.Backend` implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from platpass.firmware.model import DeviceNode
    from platpass.host.vfio_kernel.backend import VfioKernelBackend
    from platpass.reactor import Reactor


def open_backend(node: DeviceNode, reactor: Reactor) -> VfioKernelBackend:
    """Open the device the kernel created for ``node`` (already bound to vfio-platform or
    vfio-amba). ``reactor`` is accepted for the opener signature; interrupts start flowing
    at ``attach``."""
    from platpass.host.sysfs import device_for_node
    from platpass.host.vfio_kernel.backend import VfioKernelBackend

    device = device_for_node(node.path)
    return VfioKernelBackend(device.name, bus=device.bus)
