"""``platpass guest-dt``: the device-tree description a guest needs for assigned devices.

Reads the host tree (``--dtb``/``--dts``/``--live``/``--sim``; by default the live tree when
the kernel exposes one, else the simulated board), refuses any node whose verdict is
``REFUSED_*`` (with the evidence), places the devices in the guest (recorded with
``--placement FILE`` so the server and the KVM client agree), and writes the flavour's output
to ``-o``. The VMM arguments or xl.cfg lines that go with the file are printed on stdout.
Everything is computed before anything is written: on error no file changes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from platpass.assembly import TreeSource, load_tree
from platpass.cli.host_use import add_override_option
from platpass.drivers.common import PlatformDriver
from platpass.errors import GuestError, NodeError
from platpass.firmware.devicetree import LIVE_FDT, DeviceTree
from platpass.firmware.model import DeviceNode
from platpass.guest.dts import decode_strings
from platpass.guest.flavours import Flavour, FlavourOutput, crosvm, qemu, xen
from platpass.guest.placement import (
    DEFAULT_PAGE_SIZE,
    AddressRange,
    GuestPlacement,
    SpiPool,
    new_record,
)
from platpass.guest.plan import plan_guest, trigger_hints
from platpass.guest.transform import REWRITTEN, ClockRates, PciFunction
from platpass.inputs import MAX_CONFIG_BYTES, MAX_DTB_BYTES, read_input

#: Where the common clock framework publishes each clock's rate (debugfs).
DEBUGFS_CLK = Path("/sys/kernel/debug/clk")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``guest-dt`` to the ``platpass`` command line."""
    p = subparsers.add_parser(
        "guest-dt",
        help="write the guest device tree (crosvm overlay, QEMU dtb, Xen partial dt)",
        description="Describe assigned host devices to a guest: reg moved into a guest MMIO "
                    "window, interrupts as guest SPIs, clocks as fixed clocks at the host's "
                    "rate, host-only properties dropped.",
    )
    p.add_argument("nodes", nargs="+", metavar="NODE", help="host node path or alias")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dtb", metavar="FILE", help="host tree from a .dtb")
    src.add_argument("--dts", metavar="FILE", help="host tree from a .dts (compiled by dtc)")
    src.add_argument("--live", action="store_true", help=f"the running host ({LIVE_FDT})")
    src.add_argument("--sim", action="store_true", help="the built-in simulated board")
    p.add_argument("--flavour", required=True, choices=[f.value for f in Flavour])
    p.add_argument("--format", choices=("dtb", "dts"), default="dtb",
                   help="write the compiled blob (default) or the readable source")
    p.add_argument("--base-dtb", metavar="FILE",
                   help="qemu: the guest machine's DTB (qemu-system-aarch64 -M virt "
                        "-machine dumpdtb=FILE)")
    p.add_argument("--disable", action="append", default=[], metavar="PATH",
                   help="qemu: set status = \"disabled\" on this base node (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="PATH",
                   help="qemu: delete this base node, e.g. one whose place a passed-through "
                        "device takes (repeatable)")
    p.add_argument("--pci-slot", action="append", default=[], metavar="NODE=SLOT[.FN]",
                   help="qemu: NODE is a PCI function in the guest (platpass serve --pci, "
                        "QEMU -device vfio-user-pci,addr=SLOT[.FN]): describe it, with "
                        "its children, under the base's PCI host bridge at that slot "
                        "(hex, as QEMU's addr=) instead of in the MMIO window (repeatable)")
    p.add_argument("--pci-id", default="auto", metavar="auto|VVVV:DDDD",
                   help="the PCI identity those functions are served with (the value given "
                        "to serve --pci; default auto)")
    p.add_argument("--mmio-window", type=_range, metavar="BASE:SIZE",
                   help="guest MMIO window for assigned devices (default 0xc000000:0x2000000)")
    p.add_argument("--reserve", type=_range, action="append", default=[],
                   metavar="BASE:SIZE", help="guest range no device may use (repeatable)")
    p.add_argument("--spi-pool", type=_pool, metavar="START:COUNT",
                   help="guest SPIs to hand out (default 112:64; xen keeps host SPIs)")
    p.add_argument("--page-size", type=_page_size, default=None,
                   help="host page size (default 0x1000, or the placement record's)")
    p.add_argument("--clock-rate", action="append", default=[], metavar="NAME=HZ",
                   help="rate of a clock with no known rate: NAME is its clock-names entry, "
                        "its provider path, PROVIDER:INDEX, or * (repeatable)")
    p.add_argument("--placement", metavar="FILE",
                   help="placement record to reuse and update (JSON, read by the KVM client)")
    p.add_argument("-o", "--output", required=True, metavar="OUT")
    add_override_option(p)
    p.set_defaults(func=run)


def _range(text: str) -> AddressRange:
    try:
        return AddressRange.parse(text)
    except GuestError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _pool(text: str) -> SpiPool:
    try:
        return SpiPool.parse(text)
    except GuestError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _page_size(text: str) -> int:
    try:
        size = int(text, 0)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from err
    if size < 0x1000 or size & (size - 1):
        raise argparse.ArgumentTypeError(f"page size {text} is not a power of two >= 4096")
    return size


def parse_clock_rates(items: list[str]) -> dict[str, int]:
    """``NAME=HZ`` items (HZ in any base, or with a k/M suffix) as a mapping."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise GuestError(f"--clock-rate {item!r}: expected NAME=HZ")
        scale = 1
        if value[-1:] in ("k", "M"):
            scale = 1000 if value[-1] == "k" else 1_000_000
            value = value[:-1]
        try:
            rate = int(value, 0) * scale
        except ValueError as err:
            raise GuestError(f"--clock-rate {item!r}: {value!r} is not a number") from err
        if not 0 < rate <= 0xFFFFFFFF:
            raise GuestError(f"--clock-rate {item!r}: rate must be 1..4294967295 Hz")
        out[name] = rate
    return out


def parse_pci_slots(items: list[str]) -> dict[str, tuple[int, int]]:
    """``NODE=SLOT[.FN]`` items (hex, as QEMU's ``addr=``) as NODE -> (slot, function)."""
    out: dict[str, tuple[int, int]] = {}
    for item in items:
        node, sep, addr = item.rpartition("=")
        slot_text, _, fn_text = addr.partition(".")
        try:
            if not sep or not node:
                raise ValueError
            slot, function = int(slot_text, 16), int(fn_text or "0", 16)
        except ValueError as err:
            raise GuestError(f"--pci-slot {item!r}: expected NODE=SLOT[.FN] "
                             "(hex, e.g. /soc/spi@60000=2)") from err
        if not (0 <= slot <= 0x1F and 0 <= function <= 7):
            raise GuestError(f"--pci-slot {item!r}: slot is 0-1f and function 0-7")
        if node in out:
            raise GuestError(f"--pci-slot: {node} is given twice")
        out[node] = (slot, function)
    return out


def pci_functions(tree: DeviceTree, devices: list[tuple[DeviceNode, PlatformDriver]],
                  slots: dict[str, tuple[int, int]], requested: str,
                  bus: int) -> dict[str, PciFunction]:
    """Host path -> the PCI function each ``--pci-slot`` device is in the guest, with the
    identity ``serve --pci`` gives it (the same choice, so both sides agree)."""
    from platpass.vfio_device.pci.ids import PciIdError, choose_identity

    by_path = {node.path: (node, driver) for node, driver in devices}
    out: dict[str, PciFunction] = {}
    for name, (slot, function) in slots.items():
        try:
            path = tree.raw_node(name).path
        except NodeError as err:
            raise GuestError(f"--pci-slot {name}: {err}") from err
        if path not in by_path:
            raise GuestError(f"--pci-slot {name}: not one of the devices given")
        node, driver = by_path[path]
        try:
            identity, _why = choose_identity(node, driver, requested)
        except PciIdError as err:
            raise GuestError(str(err)) from err
        out[path] = PciFunction(bus, slot, function, identity.vendor, identity.device)
    return out


def tree_source(args: argparse.Namespace) -> TreeSource:
    """The host tree the arguments name (default: the live tree where there is one, else
    the simulated board)."""
    if args.dtb:
        return TreeSource("dtb", Path(args.dtb))
    if args.dts:
        return TreeSource("dts", Path(args.dts))
    if args.live or (not args.sim and LIVE_FDT.exists()):
        return TreeSource("live")
    return TreeSource("sim")


def provider_names(tree: DeviceTree, nodes: list[DeviceNode]) -> dict[str, tuple[str, ...]]:
    """Clock provider path -> its Linux clock names (``clock-output-names`` or node name)."""
    out: dict[str, tuple[str, ...]] = {}
    for node in nodes:
        for clock in node.clocks:
            if clock.provider in out:
                continue
            try:
                raw = tree.raw_node(clock.provider)
            except NodeError:
                continue
            names = decode_strings(raw.props.get("clock-output-names", b""))
            out[clock.provider] = names or (raw.name.split("@", 1)[0],)
    return out


def live_clock_rates(names: dict[str, tuple[str, ...]],
                     root: Path = DEBUGFS_CLK) -> dict[str, int]:
    """Rates of the named clocks from debugfs (only those that exist and parse)."""
    out: dict[str, int] = {}
    for candidates in names.values():
        for name in candidates:
            if "/" in name or name in out:
                continue
            try:
                out[name] = int((root / name / "clk_rate").read_text().strip())
            except (OSError, ValueError):
                continue
    return out


def select_devices(tree: DeviceTree, wanted: list[str],
                   overrides: Iterable[tuple[str, frozenset[str]]] = (),
                   ) -> list[tuple[DeviceNode, PlatformDriver]]:
    """The wanted nodes with their drivers; raises GuestError for any refused node.

    The wanted nodes go to one guest together: they are judged as one co-assignment group
    (a child of one may use an interrupt or GPIO of another).
    """
    from platpass.assembly.plan import log_waivers
    from platpass.cli.host_use import overrides_for
    from platpass.drivers.registry import default_registry
    from platpass.firmware.verdict import assess_tree

    group = []
    for name in wanted:
        try:
            group.append(tree.raw_node(name).path)
        except NodeError:
            continue
    judged = assess_tree(tree, default_registry(), groups=[group],
                         overrides=overrides_for(tree, overrides))
    assessments = {a.node.path: a for a in judged if a.node.path in group}
    log_waivers(tree.source, assessments.values())
    out: list[tuple[DeviceNode, PlatformDriver]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for name in wanted:
        try:
            path = tree.raw_node(name).path
        except NodeError as err:
            problems.append(str(err))
            continue
        if path in seen:
            continue
        seen.add(path)
        found = assessments.get(path)
        if found is None:
            problems.append(f"{path}: not a memory-mapped device")
            continue
        if not found.may_assign or found.driver is None:
            problems.append(f"{path}: {found.explanation}")
            continue
        out.append((found.node, found.driver(found.node)))
    if problems:
        raise GuestError("cannot describe these devices to a guest:\n  "
                         + "\n  ".join(problems))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all; GuestError (one line) when it cannot be."""
    if path.is_dir():
        raise GuestError(f"cannot write {path}: it is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
    except OSError as err:
        raise GuestError(f"cannot write {path}: {err.strerror or err} "
                         f"(creating a file in {path.parent or Path('.')})") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise GuestError(f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    """Build, then write the output and the record; print the VMM lines."""
    flavour = Flavour(args.flavour)
    if flavour is not Flavour.QEMU and (args.base_dtb or args.disable or args.remove
                                        or args.pci_slot):
        raise GuestError("--base-dtb, --disable, --remove and --pci-slot apply to "
                         "--flavour qemu only")
    slots = parse_pci_slots(args.pci_slot)
    if flavour is Flavour.QEMU and not args.base_dtb:
        raise GuestError("--flavour qemu needs --base-dtb (dump one with qemu-system-aarch64 "
                         "-M virt -machine dumpdtb=virt.dtb)")
    out_path = Path(args.output)
    tree = load_tree(tree_source(args))
    devices = select_devices(tree, args.nodes, args.override)

    record_path = Path(args.placement) if args.placement else None
    if record_path is not None and (record_path.exists() or record_path.is_symlink()):
        record = GuestPlacement.from_json(read_input(
            record_path, limit=MAX_CONFIG_BYTES, what="placement record", error=GuestError))
        if args.page_size is not None and args.page_size != record.page_size:
            raise GuestError(f"{record_path} was made for {record.page_size:#x}-byte pages, "
                             f"not --page-size {args.page_size:#x}")
        if args.mmio_window:
            record = replace(record, window=args.mmio_window)
        if args.spi_pool:
            record = replace(record, spi_pool=args.spi_pool)
    else:
        record = new_record(page_size=args.page_size or DEFAULT_PAGE_SIZE,
                            window=args.mmio_window,
                            spi_pool=args.spi_pool)

    nodes = [node for node, _ in devices]
    names = provider_names(tree, nodes)
    live = live_clock_rates(names) if (args.live or tree.source == str(LIVE_FDT)) else {}
    rates = ClockRates(overrides=parse_clock_rates(args.clock_rate), live=live,
                       provider_names=names)
    reserved = list(args.reserve)
    reserved_spis: frozenset[int] = frozenset()
    gic_phandle = None
    base_blob = b""
    pci_bus = 0
    if flavour is Flavour.QEMU:
        base_blob = read_input(args.base_dtb, limit=MAX_DTB_BYTES, what="base device tree",
                               error=GuestError)
        base = qemu.inspect_base(base_blob, args.disable, args.remove)
        reserved += base.reserved(record.page_size)
        reserved_spis = base.spis
        gic_phandle = base.gic_phandle
        pci_bus = base.pci_root_bus
    pci = pci_functions(tree, devices, slots, args.pci_id, pci_bus) if slots else {}

    guests, record = plan_guest(devices, flavour, record, rates=rates,
                                host_phandles=frozenset(tree.raw.by_phandle),
                                reserved=reserved, reserved_spis=reserved_spis,
                                gic_phandle=gic_phandle,
                                trigger_hints=trigger_hints(
                                    {n.path: n.props for n in tree.raw.nodes
                                     if "ti,intr-trigger-type" in n.props}),
                                host_tree=tree.raw, pci=pci)
    output: FlavourOutput
    if flavour is Flavour.CROSVM:
        output = crosvm.build(guests, str(out_path))
    elif flavour is Flavour.QEMU:
        output = qemu.build(base_blob, guests, args.disable, args.remove)
        lines = [f"-dtb {out_path}"]
        from platpass.vmm.qemu_pci import vfio_user_pci

        for path, function in pci.items():
            device = vfio_user_pci("SOCKET", function.qemu_addr)
            lines.append(f"-device '{device}'  # {path}")
        output = replace(output, vmm_lines=tuple(lines))
    else:
        output = xen.build(guests, str(out_path), record.page_size)

    data = output.source.encode() if args.format == "dts" else output.blob
    _write_atomic(out_path, data)
    if record_path is not None:
        _write_atomic(record_path, record.to_json().encode())
    for guest in guests:
        dropped = ", ".join(sorted(name for name, why in guest.dropped.items()
                                   if why != REWRITTEN)) or "nothing"
        print(f"# {guest.host.path} -> {guest.node.name} (label {guest.label}); "
              f"dropped: {dropped}")
    for line in output.vmm_lines:
        print(line)
    return 0
