"""A PCI personality for a platpass device: the same device, described the way VFIO
describes a PCI function, so that PCI-only VFIO clients (QEMU's ``vfio-user-pci``,
cloud-hypervisor) and the unmodified PCI glue drivers in their guests can use it.

Layers: :mod:`.config_space` (a PCI 3.0 type-0 header, pure), :mod:`.ids` (which PCI IDs
unmodified Linux drivers bind, per family and register layout, pure), :mod:`.device` (the
VFIO PCI view of a :class:`~platpass.vfio_device.device.VfioDevice`).

It lives in ``vfio_device`` because it is a second VFIO ABI over the same device (``vfio.h``
PCI region and IRQ indexes), transport-free like the platform one: the vfio-user server
moves its bytes without knowing which personality it serves.
"""
