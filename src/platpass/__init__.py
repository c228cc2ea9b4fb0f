"""platpass: assign simple, non-DMA-capable platform devices to virtual machines.

The package is laid out along the data flow (see README): ``firmware`` (device tree and DMA
verdicts) -> ``host`` (backends that reach the registers and the interrupt) -> ``drivers``
(per-IP knowledge) -> ``vfio_device`` (VFIO semantics and the emulated IOMMU) ->
``vfio_user`` (the socket protocol) -> ``guest`` (guest device tree) and ``vmm`` (KVM client).
"""

__version__ = "0.1.0"
