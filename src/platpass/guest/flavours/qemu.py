"""QEMU: the guest nodes merged into a full guest DTB for ``-dtb``.

Devices QEMU gives the guest as PCI functions (``vfio-user-pci``) are described under the
base's PCI host bridge instead, at the slot the VMM's ``addr=`` puts them in: Linux attaches
that node to the function it enumerates there, and its driver finds its clocks and its
bus's children through it.

The base is a DTB of the machine the guest runs on (``qemu-system-aarch64 -M virt
-machine dumpdtb=F``). It is decompiled, the guest nodes are appended to its root with
``interrupt-parent`` set to the base GIC's phandle, nodes the user asks for are disabled
or removed (``/delete-node/``; e.g. QEMU's own PL031 when a passed-through one takes its
place: a disabled node still claims its unit address), and the whole tree is compiled with
every dtc check on: the base's own warnings (a decompiled DTB has numeric phandles, which
dtc flags) are measured first and only warnings our additions cause are errors. The base's
MMIO ranges and root-level unit addresses are reported so the allocator never places a
device over one of the board's, nor gives a node a unit address already in use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import libfdt

from platpass.errors import DeviceTreeLoadError, GuestError
from platpass.firmware.rawtree import read_blob
from platpass.guest.dtc import baseline_warnings, compile_dts, decompile_dtb
from platpass.guest.dts import Node, cells_of, comment_safe, render_nodes
from platpass.guest.flavours import FlavourOutput
from platpass.guest.placement import AddressRange
from platpass.guest.transform import GuestDevice


@dataclass(frozen=True, slots=True)
class BaseTree:
    """What the merge needs to know about the base DTB."""

    gic_phandle: int
    address_cells: int
    size_cells: int
    #: MMIO ranges of the base's enabled root-level nodes (not counting disabled ones).
    occupied: tuple[AddressRange, ...]
    #: SPIs the base's enabled root-level nodes use.
    spis: frozenset[int]
    #: Unit addresses of root-level nodes that stay in the tree (a new node must not reuse
    #: one, whatever its status: dtc's unique_unit_address check).
    unit_addresses: frozenset[int]
    #: Names of the root-level nodes that stay in the tree.
    root_names: frozenset[str] = frozenset()
    #: The root-level PCI host bridge (``device_type = "pci"``), its root bus number
    #: (first ``bus-range`` cell) and the unit addresses of the functions it already
    #: describes; None when the machine has none.
    pci_host: str | None = None
    pci_root_bus: int = 0
    pci_units: frozenset[str] = frozenset()

    def reserved(self, page_size: int = 0x1000) -> tuple[AddressRange, ...]:
        """Ranges the allocator must avoid: occupied MMIO and pages of used unit addresses."""
        pages = tuple(AddressRange(a - a % page_size, page_size) for a in self.unit_addresses)
        return self.occupied + pages


def _u32(fdt: libfdt.FdtRo, offset: int, name: str) -> int | None:
    raw = fdt.getprop(offset, name, quiet=(libfdt.NOTFOUND,))
    if isinstance(raw, int) or raw is None or len(raw) != 4:
        return None
    return int.from_bytes(bytes(raw), "big")


def inspect_base(blob: bytes, disable: Sequence[str] = (),
                 remove: Sequence[str] = ()) -> BaseTree:
    """Read the GIC phandle, root cell sizes and occupied MMIO of a base DTB.

    Raises :class:`GuestError` when the blob is not a DTB, its root does not use 2 address
    and 2 size cells, its interrupt parent is not a 3-cell GIC, or a path in ``disable``
    does not exist.
    """
    # The whole blob is validated first (header, structure block, names: libfdt's
    # fdt_check_full, as for every host tree); a corrupt one is a one-line error.
    try:
        read_blob(blob, "base DTB")
    except DeviceTreeLoadError as err:
        raise GuestError(f"base DTB is not a valid device tree: "
                         f"{str(err).removeprefix('base DTB: ')}") from err
    try:
        return _inspect(blob, disable, remove)
    except libfdt.FdtException as err:
        raise GuestError(f"base DTB is not a valid device tree: {err}") from err


def _inspect(blob: bytes, disable: Sequence[str], remove: Sequence[str]) -> BaseTree:
    fdt = libfdt.FdtRo(blob)
    root = fdt.path_offset("/")
    acells, scells = _u32(fdt, root, "#address-cells"), _u32(fdt, root, "#size-cells")
    if (acells, scells) != (2, 2):
        raise GuestError(f"base DTB root has #address-cells={acells} #size-cells={scells};"
                         " only 2/2 roots (QEMU virt, crosvm) are supported")
    gic = _u32(fdt, root, "interrupt-parent")
    if gic is None:
        raise GuestError("base DTB root has no interrupt-parent (no GIC to wire SPIs to)")
    gic_offset = fdt.node_offset_by_phandle(gic, quiet=(libfdt.NOTFOUND,))
    if gic_offset < 0 or _u32(fdt, gic_offset, "#interrupt-cells") != 3:
        raise GuestError(f"base DTB interrupt parent (phandle {gic:#x}) is not a GIC with "
                         "#interrupt-cells = 3")
    disabled_offsets: set[int] = set()
    removed_offsets: set[int] = set()
    for option, paths, into in (("--disable", disable, disabled_offsets),
                                ("--remove", remove, removed_offsets)):
        for path in paths:
            try:
                into.add(fdt.path_offset(path))
            except libfdt.FdtException as err:
                raise GuestError(f"{option} {path}: no such node in the base DTB") from err
    occupied: list[AddressRange] = []
    spis: set[int] = set()
    units: set[int] = set()
    names: set[str] = set()
    pci_hosts: list[tuple[str, int, frozenset[str]]] = []
    skip = disabled_offsets | removed_offsets
    offset = fdt.first_subnode(root, quiet=(libfdt.NOTFOUND,))
    while offset >= 0:
        name = fdt.get_name(offset)
        kind = fdt.getprop(offset, "device_type", quiet=(libfdt.NOTFOUND,))
        if not isinstance(kind, int) and bytes(kind).rstrip(b"\0") == b"pci" \
                and offset not in skip:
            bus_range = fdt.getprop(offset, "bus-range", quiet=(libfdt.NOTFOUND,))
            first_bus = 0 if isinstance(bus_range, int) else cells_of(bytes(bus_range))[0]
            pci_hosts.append((f"/{name}", first_bus, _child_units(fdt, offset)))
        if offset not in removed_offsets:
            names.add(name)
        if "@" in name and offset not in removed_offsets:
            with contextlib.suppress(ValueError):
                units.add(int(name.split("@", 1)[1].split(",")[0], 16))
        status = fdt.getprop(offset, "status", quiet=(libfdt.NOTFOUND,))
        enabled = isinstance(status, int) or bytes(status).rstrip(b"\0") in (b"okay", b"ok")
        if enabled and offset not in skip:
            reg = fdt.getprop(offset, "reg", quiet=(libfdt.NOTFOUND,))
            if not isinstance(reg, int):
                cells = cells_of(bytes(reg))
                for i in range(0, len(cells) - 3, 4):
                    base = cells[i] << 32 | cells[i + 1]
                    size = cells[i + 2] << 32 | cells[i + 3]
                    if size:
                        occupied.append(AddressRange(base, size))
            irqs = fdt.getprop(offset, "interrupts", quiet=(libfdt.NOTFOUND,))
            parent = _u32(fdt, offset, "interrupt-parent")
            if not isinstance(irqs, int) and parent in (None, gic):
                cells = cells_of(bytes(irqs))
                spis.update(cells[i + 1] for i in range(0, len(cells) - 2, 3) if cells[i] == 0)
        offset = fdt.next_subnode(offset, quiet=(libfdt.NOTFOUND,))
    host, bus, pci_units = pci_hosts[0] if len(pci_hosts) == 1 else (None, 0, frozenset())
    return BaseTree(gic, 2, 2, tuple(occupied), frozenset(spis), frozenset(units),
                    frozenset(names), host, bus, pci_units)


def _child_units(fdt: libfdt.FdtRo, parent: int) -> frozenset[str]:
    units = set()
    child = fdt.first_subnode(parent, quiet=(libfdt.NOTFOUND,))
    while child >= 0:
        name = fdt.get_name(child)
        if "@" in name:
            units.add(name.split("@", 1)[1])
        child = fdt.next_subnode(child, quiet=(libfdt.NOTFOUND,))
    return frozenset(units)


def render_merged(base_source: str, devices: Sequence[GuestDevice],
                  disable: Sequence[str] = (), remove: Sequence[str] = (),
                  pci_host: str | None = None) -> str:
    """The base source with the guest nodes added to its root (PCI functions' nodes under
    ``pci_host``), ``disable`` turned off and ``remove`` deleted."""
    nodes: list[Node] = []
    functions: list[Node] = []
    for device in devices:
        (nodes if device.pci is None else functions).append(device.node)
        nodes.extend(clock.node() for clock in device.clocks)
    # Removals first: a guest node may take a removed node's name (same device type at the
    # same address), and dtc merges same-named nodes, so deleting afterwards would delete ours.
    parts = [base_source.rstrip()]
    for path in remove:
        parts += ["", f"/* removed for platpass: {comment_safe(path)} */",
                  f"/delete-node/ &{{{path}}};"]
    parts += ["", "/* added by platpass guest-dt --flavour qemu */",
              "/ {", render_nodes(nodes, indent=1), "};"]
    if functions:
        if pci_host is None:
            raise GuestError("no PCI host bridge to put the PCI functions under")
        parts += ["", "/* PCI functions (vfio-user-pci), added by platpass guest-dt */",
                  f"&{{{pci_host}}} {{", render_nodes(functions, indent=1), "};"]
    for path in disable:
        parts += ["", f"/* disabled for platpass: {comment_safe(path)} */",
                  f"&{{{path}}} {{", '\tstatus = "disabled";', "};"]
    return "\n".join(parts) + "\n"


def build(base_blob: bytes, devices: Sequence[GuestDevice],
          disable: Sequence[str] = (), remove: Sequence[str] = ()) -> FlavourOutput:
    """Merge ``devices`` into ``base_blob``; raises GuestError if dtc has anything to say
    about what we added."""
    for path in (*disable, *remove):
        if not path.startswith("/") or any(c in path for c in "{}\n\""):
            raise GuestError(f"--disable {path!r} is not a node path")
    base = inspect_base(base_blob, disable, remove)
    for device in devices:
        for name in (device.node.name, *(clock.name for clock in device.clocks)):
            if name in base.root_names:
                raise GuestError(f"the base DTB already has a node /{name}; dtc would merge "
                                 f"{device.host.path}'s guest node into it (--remove it, or "
                                 "place the device elsewhere)")
    functions = [device for device in devices if device.pci is not None]
    if functions and base.pci_host is None:
        raise GuestError("the base DTB has no PCI host bridge (a root node with device_type "
                         "= \"pci\"), or several: cannot place "
                         + ", ".join(d.host.path for d in functions) + " as PCI functions")
    seen: set[str] = set(base.pci_units)
    for device in functions:
        assert device.pci is not None
        if device.pci.bus != base.pci_root_bus:
            raise GuestError(f"{device.host.path}: PCI bus {device.pci.bus:#x} is not the root "
                             f"bus {base.pci_root_bus:#x} of {base.pci_host}")
        if device.pci.unit_address in seen:
            raise GuestError(f"{device.host.path}: PCI slot {device.pci.unit_address} of "
                             f"{base.pci_host} is already described")
        seen.add(device.pci.unit_address)
    base_source = decompile_dtb(base_blob)
    source = render_merged(base_source, devices, disable, remove, base.pci_host)
    blob = compile_dts(source, tolerated=baseline_warnings(base_source))
    return FlavourOutput(source, blob, ("-dtb OUT",))
