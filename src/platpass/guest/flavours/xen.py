"""Xen: a partial device tree (``device_tree =`` in xl.cfg) plus the xl.cfg lines.

Following Xen's ``docs/misc/arm/passthrough.txt``: libxl copies ``/passthrough`` (and
``/aliases``) from this file into the guest tree. ``/passthrough`` is a ``simple-bus`` with
``ranges`` and 2/2 cells; each device node names the guest GIC by Xen's fixed phandle 65000
(``GUEST_PHANDLE_GIC``) and carries ``xen,reg`` (host address, size, guest address — whole
pages, as Xen maps pages), ``xen,path`` (the host node) and ``xen,force-assign-without-iommu``
(these devices have no IOMMU: platpass's verdict is the reason that is safe). Xen hands the
physical interrupt through with the same number, so the guest SPI is the host SPI and the
trigger cell is the host's. xl.cfg gets ``dtdev``, ``iomem`` (page frame numbers in hex,
``MFN,COUNT@GFN``) and ``irqs`` (host SPI + 32).
"""

from __future__ import annotations

from collections.abc import Sequence

from platpass.guest.dtc import compile_dts
from platpass.guest.dts import Cells, Node, Strings, header, render_nodes, u32, u64_cells
from platpass.guest.flavours import FlavourOutput
from platpass.guest.transform import GuestDevice

#: Xen's guest GIC phandle (``GUEST_PHANDLE_GIC`` in xen/include/public/arch-arm.h).
GUEST_PHANDLE_GIC = 65000
#: Fixed clocks must live inside ``/passthrough`` (libxl copies nothing else), where dtc's
#: ``simple_bus_reg`` check expects every child to have ``reg``; a clock has none.
DISABLED_CHECKS_WITH_CLOCKS: tuple[str, ...] = ("simple_bus_reg",)


def decorate(device: GuestDevice, page_size: int) -> Node:
    """The device's node with the ``xen,*`` properties added."""
    node = device.node
    xen_reg: list[int] = []
    seen: set[tuple[int, int]] = set()
    for region in device.placement.regions:
        host, guest = region.host_pages(page_size), region.guest_pages(page_size)
        if (host.base, guest.base) in seen:
            continue
        seen.add((host.base, guest.base))
        xen_reg += [*u64_cells(host.base), *u64_cells(host.size), *u64_cells(guest.base)]
    props = dict(node.properties)
    if xen_reg:
        props["xen,reg"] = u32(*xen_reg)
    props["xen,path"] = Strings((device.host.path,))
    props["xen,force-assign-without-iommu"] = Cells(())
    return Node(node.name, node.label, props, list(node.children), node.comments)


def render_partial(devices: Sequence[GuestDevice], page_size: int = 0x1000) -> str:
    """The partial device tree source."""
    children: list[Node] = []
    for device in devices:
        children.append(decorate(device, page_size))
        children.extend(clock.node() for clock in device.clocks)
    passthrough = Node(
        name="passthrough",
        properties={
            "compatible": Strings(("simple-bus",)),
            "ranges": Cells(()),
            "#address-cells": u32(2),
            "#size-cells": u32(2),
        },
        children=children,
    )
    gic = Node(
        name="gic",
        properties={
            "interrupt-controller": Cells(()),
            "#interrupt-cells": u32(3),
            "#address-cells": u32(0),
            "phandle": u32(GUEST_PHANDLE_GIC),
        },
        comments=("stand-in for the guest GIC libxl creates (phandle 65000);",
                  "libxl copies only /passthrough and /aliases from this file"),
    )
    comments = ["platpass guest-dt --flavour xen (partial device tree for xl.cfg",
                "device_tree =)", "",
                *(f"{d.label}: host {d.host.path}" for d in devices)]
    return (header(comments) + "/ {\n\t#address-cells = <0x2>;\n\t#size-cells = <0x2>;\n\n"
            + render_nodes([gic, passthrough], indent=1) + "\n};\n")


def xl_cfg_lines(devices: Sequence[GuestDevice], dtb_path: str,
                 page_size: int = 0x1000) -> tuple[str, ...]:
    """The xl.cfg lines that go with the partial device tree."""
    dtdev = ", ".join(f'"{d.host.path}"' for d in devices)
    iomem: list[str] = []
    for device in devices:
        seen: set[int] = set()
        for region in device.placement.regions:
            host, guest = region.host_pages(page_size), region.guest_pages(page_size)
            if host.base in seen:
                continue
            seen.add(host.base)
            iomem.append(f'"{host.base // page_size:x},{host.size // page_size:x}'
                         f'@{guest.base // page_size:x}"')
    irqs = ", ".join(str(i.host_number + 32)
                     for d in devices for i in d.placement.interrupts)
    return (
        f'device_tree = "{dtb_path}"',
        f"dtdev = [ {dtdev} ]",
        f"iomem = [ {', '.join(iomem)} ]",
        f"irqs = [ {irqs} ]",
    )


def build(devices: Sequence[GuestDevice], dtb_path: str = "passthrough.dtb",
          page_size: int = 0x1000) -> FlavourOutput:
    """Render and compile the partial tree; raises GuestError if dtc has anything to say."""
    source = render_partial(devices, page_size)
    has_clocks = any(d.clocks for d in devices)
    blob = compile_dts(source,
                       disabled_checks=DISABLED_CHECKS_WITH_CLOCKS if has_clocks else ())
    return FlavourOutput(source, blob, xl_cfg_lines(devices, dtb_path, page_size))
