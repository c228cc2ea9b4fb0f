"""Every assignable device of the real board trees (real_dtbs.py), in every flavour.

Per board: the firmware loader, the verdicts and the driver registry pick the devices; one
dtc run per flavour compiles all of them (warnings are errors); libfdt reads the result
back and checks each device's moved ``reg``, SPIs and trigger cells, dropped properties and
fixed clocks against the placement record.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import libfdt
import pytest

from platpass.drivers.registry import default_registry
from platpass.errors import GuestError
from platpass.firmware.devicetree import load_dtb
from platpass.firmware.verdict import assess_tree
from platpass.guest.dts import cells_of
from platpass.guest.flavours import Flavour, crosvm, qemu, xen
from platpass.guest.placement import SpiPool, new_record
from platpass.guest.plan import plan_guest, trigger_hints
from platpass.guest.transform import (
    HOST_ONLY_PATTERNS,
    HOST_ONLY_PROPERTIES,
    ClockRates,
    gic_flags,
)
from real_dtbs import PATHS

DTBS = list(PATHS)
RATES = ClockRates(overrides={"*": 24_000_000})
POOL = SpiPool(64, 900)
REWRITTEN = {"reg", "interrupts", "interrupt-parent", "clocks", "clock-names", "status",
             "phandle"}


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def assignable(path: Path, registry):
    tree = load_dtb(path)
    devices = [(a.node, a.driver(a.node)) for a in assess_tree(tree, registry)
               if a.may_assign]
    hints = trigger_hints({n.path: n.props for n in tree.raw.nodes})
    return tree, devices, hints


def check_devices(fdt: libfdt.FdtRo, parent: str, guests, *, host_flags: bool) -> None:
    for guest in guests:
        path = f"{parent}/{guest.node.name}"
        offset = fdt.path_offset(path)
        reg = cells_of(bytes(fdt.getprop(offset, "reg")))
        expected = []
        for r in guest.placement.regions:
            expected += [r.guest_address >> 32, r.guest_address & 0xFFFFFFFF,
                         r.size >> 32, r.size & 0xFFFFFFFF]
            assert r.guest_address % 0x1000 == r.host_address % 0x1000
        assert list(reg) == expected, path
        if guest.placement.interrupts:
            irqs = cells_of(bytes(fdt.getprop(offset, "interrupts")))
            expected = []
            for i in guest.placement.interrupts:
                trigger = i.host_trigger if host_flags else i.guest_trigger
                expected += [0, i.guest_spi, gic_flags(trigger)]
                if not host_flags:
                    assert gic_flags(i.guest_trigger) in (1, 4)
                    assert i.guest_trigger.is_level == i.host_trigger.is_level
            assert list(irqs) == expected, path
        names = set()
        prop_offset = fdt.first_property_offset(offset, quiet=(libfdt.NOTFOUND,))
        while prop_offset >= 0:
            names.add(fdt.get_property_by_offset(prop_offset).name)
            prop_offset = fdt.next_property_offset(prop_offset, quiet=(libfdt.NOTFOUND,))
        for name in names - REWRITTEN:
            assert name not in HOST_ONLY_PROPERTIES, (path, name)
            assert not any(fnmatch.fnmatchcase(name, p) for p in HOST_ONLY_PATTERNS), name
        for dropped in guest.dropped:
            if dropped not in REWRITTEN:
                assert dropped not in names, (path, dropped)
        if guest.clocks:
            for phandle in cells_of(bytes(fdt.getprop(offset, "clocks"))):
                clock = fdt.node_offset_by_phandle(phandle)
                assert bytes(fdt.getprop(clock, "compatible")) == b"fixed-clock\0"
                assert cells_of(bytes(fdt.getprop(clock, "clock-frequency")))[0] > 0
        assert bytes(fdt.getprop(offset, "status")) == b"okay\0"


def test_the_shared_trees_have_assignable_devices(registry) -> None:
    assert len(DTBS) >= 40
    total = sum(len(assignable(p, registry)[1]) for p in DTBS[:10])
    assert total > 20


@pytest.mark.parametrize("dtb", DTBS, ids=lambda p: p.stem)
def test_every_assignable_device_in_every_flavour(dtb: Path, registry, qemu_virt_dtb) -> None:
    tree, devices, hints = assignable(dtb, registry)
    if not devices:
        # Nothing on this board may go to a guest (on the Qualcomm boards the GENI serial
        # engines master the bus and the rest serve the host): every device a driver
        # claims says why, and planning nothing places nothing.
        claimed = [a for a in assess_tree(tree, registry) if a.driver is not None]
        assert claimed and all(not a.may_assign and a.evidence for a in claimed), dtb.name
        assert plan_guest([], Flavour.CROSVM, new_record(spi_pool=POOL), rates=RATES)[0] == []
        return
    phandles = frozenset(tree.raw.by_phandle)

    guests, _ = plan_guest(devices, Flavour.CROSVM, new_record(spi_pool=POOL), rates=RATES,
                           host_phandles=phandles, trigger_hints=hints, host_tree=tree.raw)
    out = crosvm.build(guests)
    check_devices(libfdt.FdtRo(out.blob), "/fragment@0/__overlay__", guests, host_flags=False)

    base_blob = qemu_virt_dtb.read_bytes()
    base = qemu.inspect_base(base_blob)
    guests, _ = plan_guest(devices, Flavour.QEMU, new_record(spi_pool=POOL), rates=RATES,
                           host_phandles=phandles, reserved=base.reserved(),
                           reserved_spis=base.spis, gic_phandle=base.gic_phandle,
                           trigger_hints=hints, host_tree=tree.raw)
    assert not {i.guest_spi for g in guests for i in g.placement.interrupts} & base.spis
    out = qemu.build(base_blob, guests)
    check_devices(libfdt.FdtRo(out.blob), "", guests, host_flags=False)

    # Xen passes physical SPIs 1:1: a non-SPI line is refused, and two devices on the same
    # SPI (possible between nodes that are both disabled on the host) cannot share a guest.
    spi_only, used = [], {}
    for node, driver in devices:
        if not all(i.type.value == "SPI" for i in node.interrupts):
            with pytest.raises(GuestError, match="only physical SPIs"):
                plan_guest([(node, driver)], Flavour.XEN, new_record(), rates=RATES)
            continue
        clash = next((used[i.number] for i in node.interrupts if i.number in used), None)
        if clash is not None:
            with pytest.raises(GuestError, match="already given"):
                plan_guest([clash, (node, driver)], Flavour.XEN, new_record(), rates=RATES,
                           trigger_hints=hints)
            continue
        used.update({i.number: (node, driver) for i in node.interrupts})
        spi_only.append((node, driver))
    if spi_only:
        guests, _ = plan_guest(spi_only, Flavour.XEN, new_record(), rates=RATES,
                               host_phandles=phandles, trigger_hints=hints)
        out = xen.build(guests)
        fdt = libfdt.FdtRo(out.blob)
        check_devices(fdt, "/passthrough", guests, host_flags=True)
        for guest in guests:
            offset = fdt.path_offset(f"/passthrough/{guest.node.name}")
            assert bytes(fdt.getprop(offset, "xen,path")) == guest.host.path.encode() + b"\0"
