"""Guest layer: the device-tree node a guest sees for an assigned device.

What this layer promises: from a host :class:`~platpass.firmware.model.DeviceNode` and its
driver, :mod:`.transform` builds the guest's node (``reg`` moved into a guest MMIO window,
interrupts renumbered to guest GIC SPIs, clocks replaced by ``fixed-clock`` nodes, host-only
properties and phandles to host-only nodes dropped); :mod:`.placement` allocates and
records the guest addresses and SPIs so that the server, the KVM client and the guest device
tree always agree; :mod:`.flavours` turns guest nodes into what each VMM takes (a crosvm
overlay, a QEMU ``-dtb``, a Xen partial device tree). Everything here is pure logic except
:mod:`.dtc`, the one place that runs ``dtc``.
"""
