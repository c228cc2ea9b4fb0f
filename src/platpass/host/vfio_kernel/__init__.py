"""Kernel VFIO backend: a device bound to vfio-platform / vfio-amba, reached through
``/dev/vfio`` (an IOMMU group or, in no-IOMMU mode, ``noiommu-N``).

``uapi`` holds every ioctl number and C layout, ``syscalls`` the thin shim that all kernel
calls go through (replaceable in tests, errors wrapped with errno and context), ``backend``
the :class:`platpass.host.backend.Backend` implementation.
"""
