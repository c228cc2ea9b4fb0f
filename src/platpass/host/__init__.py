"""Host backends: how the device's registers and interrupt reach this process.

``uio`` (Linux UIO, no taint), ``vfio_kernel`` (a device bound to vfio-platform/vfio-amba)
and ``simulated`` (register-level models of real IP blocks) all implement
:class:`platpass.host.backend.Backend`.
"""
