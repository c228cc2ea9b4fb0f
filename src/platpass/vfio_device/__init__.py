"""VFIO device layer: VFIO semantics over a host backend and a driver, transport-free.

The vfio-user server and in-process users (tests, benchmarks) call the same
:class:`~platpass.vfio_device.device.VfioDevice` API; errors are
:class:`platpass.errors.VfioError` carrying the errno a VFIO peer would see.
"""
