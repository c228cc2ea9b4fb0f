"""Place several devices for one guest and build their guest nodes (pure logic).

The one entry point the command line and the tests share: it applies each flavour's rules
(Xen keeps host SPIs and trigger cells and names its GIC by phandle 65000; QEMU names the
base tree's GIC; crosvm inherits the root's interrupt parent) so that no caller can mix them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from platpass.drivers.common import PlatformDriver
from platpass.firmware.model import DeviceNode, Trigger
from platpass.firmware.rawtree import RawTree
from platpass.guest.flavours import Flavour
from platpass.guest.flavours.xen import GUEST_PHANDLE_GIC
from platpass.guest.placement import (
    AddressRange,
    Allocator,
    DevicePlacement,
    GuestPlacement,
    default_label,
    unique_label,
)
from platpass.guest.subtree import guest_children
from platpass.guest.transform import ClockRates, GuestDevice, PciFunction, build_guest_device


def plan_guest(
    devices: Sequence[tuple[DeviceNode, PlatformDriver]],
    flavour: Flavour,
    record: GuestPlacement,
    *,
    rates: ClockRates | None = None,
    host_phandles: frozenset[int] = frozenset(),
    reserved: Iterable[AddressRange] = (),
    reserved_spis: Iterable[int] = (),
    gic_phandle: int | None = None,
    trigger_hints: Mapping[str, Trigger] | None = None,
    host_tree: RawTree | None = None,
    pci: Mapping[str, PciFunction] | None = None,
) -> tuple[list[GuestDevice], GuestPlacement]:
    """Guest devices for ``devices`` and the updated placement record.

    With ``host_tree``, each device takes its subtree along (:mod:`.subtree`); references
    between the devices given here become references between their guest nodes.

    ``pci`` maps the paths of devices the guest gets as PCI functions to where they sit:
    they take no MMIO window space and no SPI, and are not recorded (their placement is the
    VMM's ``addr=``).

    Devices already in ``record`` keep their placement. Raises :class:`GuestError` (nothing
    is returned, so nothing is written) when any device cannot be placed or described.
    """
    identity = flavour is Flavour.XEN
    if flavour is Flavour.XEN:
        parent: int | None = GUEST_PHANDLE_GIC
    elif flavour is Flavour.QEMU:
        parent = gic_phandle
    else:
        parent = None
    allocator = Allocator(record, reserved=reserved,
                          reserved_spis=() if identity else reserved_spis)
    pci = pci or {}
    taken = {d.label for d in record.devices}
    placements = []
    for node, _driver in devices:
        if node.path in pci:
            label = unique_label(default_label(node), taken)
            placements.append(DevicePlacement(node.path, label, (), ()))
        else:
            placements.append(allocator.place(node, identity=identity,
                                              trigger_hints=trigger_hints))
        taken.add(placements[-1].label)
    labels = {node.path: placement.label
              for (node, _driver), placement in zip(devices, placements, strict=True)}
    out = []
    for (node, driver), placement in zip(devices, placements, strict=True):
        children = ([], {}) if host_tree is None else guest_children(
            host_tree, node.path, placement.label,
            {path: label for path, label in labels.items() if path != node.path})
        out.append(build_guest_device(
            node, driver, placement, rates=rates, host_phandles=host_phandles,
            interrupt_parent=parent, host_gic_flags=identity, children=children,
            pci=pci.get(node.path)))
    return out, allocator.record


#: ``ti,intr-trigger-type`` values of TI K3 interrupt routers (``ti,sci-intr``): the trigger
#: of every line the router forwards, which its 1-cell specifiers do not carry.
_TI_INTR_TRIGGERS = {1: Trigger.EDGE_RISING, 4: Trigger.LEVEL_HIGH}


def trigger_hints(controllers: Mapping[str, Mapping[str, bytes]]) -> dict[str, Trigger]:
    """Controller path -> trigger, for controllers whose specifiers carry none.

    ``controllers`` maps node paths to raw properties (any subset of the host tree).
    """
    out: dict[str, Trigger] = {}
    for path, props in controllers.items():
        raw = props.get("ti,intr-trigger-type")
        if raw is not None and len(raw) == 4:
            trigger = _TI_INTR_TRIGGERS.get(int.from_bytes(raw, "big"))
            if trigger is not None:
                out[path] = trigger
    return out
