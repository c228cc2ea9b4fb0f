"""Each flavour's output: compiled by dtc without warnings, applied/merged, read back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import libfdt
import pytest

from platpass.errors import GuestError
from platpass.guest.dtc import compile_dts, decompile_dtb
from platpass.guest.dts import cells_of
from platpass.guest.flavours import crosvm, qemu, xen
from platpass.guest.placement import AddressRange, Allocator, SpiPool, new_record
from platpass.guest.transform import ClockRates, build_guest_device

RATES = ClockRates(overrides={"apb_pclk": 100_000_000})


def guest_devices(nodes_and_drivers, *, identity=False, interrupt_parent=None,
                  reserved=(), window=None, pool=None):
    alloc = Allocator(new_record(window=window, spi_pool=pool), reserved=reserved)
    out = []
    for node, driver in nodes_and_drivers:
        placement = alloc.place(node, identity=identity)
        out.append(build_guest_device(node, driver(node), placement, rates=RATES,
                                      interrupt_parent=interrupt_parent,
                                      host_gic_flags=identity))
    return out, alloc.record


def prop_cells(fdt: libfdt.FdtRo, path: str, name: str) -> tuple[int, ...]:
    return cells_of(bytes(fdt.getprop(fdt.path_offset(path), name)))


def recompile_without_new_warnings(blob: bytes) -> None:
    """The blob, decompiled, compiles again with every dtc check on. A decompiled blob has
    numeric phandles, which dtc reports as "not a phandle reference"; nothing else may be
    reported."""
    try:
        compile_dts(decompile_dtb(blob))
    except GuestError as err:
        report = str(err).split("--- source ---")[0].splitlines()[1:]
        real = [line for line in report if not line.endswith("is not a phandle reference")]
        assert not real, real


def test_crosvm_overlay_applies_with_fdtoverlay(tmp_path: Path, qemu_virt_dtb: Path,
                                                pl031, uart, drivers) -> None:
    fdtoverlay = shutil.which("fdtoverlay")
    assert fdtoverlay, "fdtoverlay (device-tree-compiler) missing"
    base = qemu.inspect_base(qemu_virt_dtb.read_bytes())
    devices, _ = guest_devices([(pl031, drivers["pl031"]), (uart, drivers["uart"])],
                               reserved=base.reserved())
    out = crosvm.build(devices, "pp.dtbo")
    assert "--device-tree-overlay pp.dtbo,filter" in out.vmm_lines
    assert "--vfio /sys/bus/platform/devices/ff1a0400.serial,dt-symbol=serial_ff1a0400" \
        in out.vmm_lines
    overlay = libfdt.FdtRo(out.blob)
    symbols = overlay.path_offset("/__symbols__")
    assert bytes(overlay.getprop(symbols, "serial_ff1a0400")).rstrip(b"\0") == \
        b"/fragment@0/__overlay__/serial@c002400"
    assert bytes(overlay.getprop(overlay.path_offset("/fragment@0"), "target-path")) == b"/\0"
    (tmp_path / "pp.dtbo").write_bytes(out.blob)
    merged_path = tmp_path / "merged.dtb"
    subprocess.run([fdtoverlay, "-i", str(qemu_virt_dtb), "-o", str(merged_path),
                    str(tmp_path / "pp.dtbo")], check=True, capture_output=True, timeout=30)
    merged = libfdt.FdtRo(merged_path.read_bytes())
    assert prop_cells(merged, "/serial@c002400", "reg") == (0, 0xC002400, 0, 0x100)
    assert prop_cells(merged, "/serial@c002400", "interrupts") == (0, 113, 4)
    assert prop_cells(merged, "/rtc@c001000", "interrupts") == (0, 112, 4)
    clocks = prop_cells(merged, "/serial@c002400", "clocks")
    rates = [cells_of(bytes(merged.getprop(merged.node_offset_by_phandle(p),
                                           "clock-frequency")))[0] for p in clocks]
    assert rates == [48_000_000, 100_000_000]
    # the inherited interrupt parent is the base's GIC
    root_parent = prop_cells(merged, "/", "interrupt-parent")[0]
    gic = merged.node_offset_by_phandle(root_parent)
    assert bytes(merged.getprop(gic, "compatible")).startswith(b"arm,cortex-a15-gic")
    recompile_without_new_warnings(merged_path.read_bytes())


def test_qemu_merge_replaces_pl031(qemu_virt_dtb: Path, pl031, drivers) -> None:
    base_blob = qemu_virt_dtb.read_bytes()
    base = qemu.inspect_base(base_blob, remove=["/pl031@9010000"])
    assert not any(r.base == 0x9010000 for r in base.occupied)
    assert any(r.base == 0x9000000 for r in base.occupied)  # QEMU's PL011 stays reserved
    devices, record = guest_devices(
        [(pl031, drivers["pl031"])], interrupt_parent=base.gic_phandle,
        reserved=base.reserved(), window=AddressRange(0x9010000, 0x1000), pool=SpiPool(2, 1))
    out = qemu.build(base_blob, devices, remove=["/pl031@9010000"],
                     disable=["/pl061@9030000"])
    merged = libfdt.FdtRo(out.blob)
    assert prop_cells(merged, "/rtc@9010000", "reg") == (0, 0x9010000, 0, 0x1000)
    assert prop_cells(merged, "/rtc@9010000", "interrupts") == (0, 2, 4)
    assert prop_cells(merged, "/rtc@9010000", "interrupt-parent") == (base.gic_phandle,)
    assert merged.path_offset("/pl031@9010000", quiet=(libfdt.NOTFOUND,)) == -libfdt.NOTFOUND
    assert bytes(merged.getprop(merged.path_offset("/pl061@9030000"), "status")) == \
        b"disabled\0"
    assert record.devices[0].regions[0].guest_address == 0x9010000


def test_qemu_node_takes_a_removed_nodes_place(qemu_virt_dtb: Path, drivers) -> None:
    """QEMU's own PL031 as the host node, put back where it was: ours replaces QEMU's."""
    from platpass.firmware.devicetree import load_dtb

    base_blob = qemu_virt_dtb.read_bytes()
    host = load_dtb(qemu_virt_dtb).node("/pl031@9010000")
    base = qemu.inspect_base(base_blob, remove=["/pl031@9010000"])
    devices, _ = guest_devices([(host, drivers["pl031"])], interrupt_parent=base.gic_phandle,
                               reserved=base.reserved(),
                               window=AddressRange(0x9010000, 0x1000), pool=SpiPool(2, 1))
    merged = libfdt.FdtRo(qemu.build(base_blob, devices, remove=["/pl031@9010000"]).blob)
    assert prop_cells(merged, "/pl031@9010000", "reg") == (0, 0x9010000, 0, 0x1000)
    clock = merged.node_offset_by_phandle(prop_cells(merged, "/pl031@9010000", "clocks")[0])
    assert merged.get_name(clock) == "clock-pl031-9010000-apb-pclk"
    with pytest.raises(GuestError, match="already has a node /pl031@9010000"):
        qemu.build(base_blob, devices)


def test_qemu_allocator_avoids_the_boards_devices(qemu_virt_dtb: Path, pl031,
                                                  drivers) -> None:
    base = qemu.inspect_base(qemu_virt_dtb.read_bytes())
    with pytest.raises(GuestError, match="no free"):
        guest_devices([(pl031, drivers["pl031"])], reserved=base.reserved(),
                      window=AddressRange(0x9010000, 0x1000))
    # QEMU's platform-bus@c000000 has no reg but claims its unit address
    devices, _ = guest_devices([(pl031, drivers["pl031"])], reserved=base.reserved())
    assert devices[0].placement.guest_address == 0xC001000


def test_qemu_base_checks(qemu_virt_dtb: Path) -> None:
    with pytest.raises(GuestError, match="not a valid device tree"):
        qemu.inspect_base(b"\0" * 64)
    with pytest.raises(GuestError, match="no such node"):
        qemu.inspect_base(qemu_virt_dtb.read_bytes(), disable=["/nope@0"])


def test_xen_partial_tree(pl031, uart, drivers) -> None:
    devices, record = guest_devices([(pl031, drivers["pl031"]), (uart, drivers["uart"])],
                                    identity=True, interrupt_parent=xen.GUEST_PHANDLE_GIC)
    out = xen.build(devices, "pt.dtb")
    fdt = libfdt.FdtRo(out.blob)
    pt = fdt.path_offset("/passthrough")
    assert bytes(fdt.getprop(pt, "compatible")) == b"simple-bus\0"
    assert bytes(fdt.getprop(pt, "ranges")) == b""
    assert prop_cells(fdt, "/passthrough", "#address-cells") == (2,)
    uart_path = "/passthrough/serial@c001400"
    # Xen passes the physical line: host SPI 100, host trigger level-low (8)
    assert prop_cells(fdt, uart_path, "interrupts") == (0, 100, 8)
    assert prop_cells(fdt, uart_path, "interrupt-parent") == (65000,)
    assert prop_cells(fdt, uart_path, "xen,reg") == (0, 0xFF1A0000, 0, 0x1000, 0, 0xC001000)
    assert bytes(fdt.getprop(fdt.path_offset(uart_path), "xen,path")) == \
        b"/serial@ff1a0400\0"
    assert bytes(fdt.getprop(fdt.path_offset(uart_path),
                             "xen,force-assign-without-iommu")) == b""
    assert out.vmm_lines == (
        'device_tree = "pt.dtb"',
        'dtdev = [ "/bus@8000000/rtc@1c170000", "/serial@ff1a0400" ]',
        'iomem = [ "1c170,1@c000", "ff1a0,1@c001" ]',
        "irqs = [ 36, 132 ]",
    )
    assert record.devices[1].interrupts[0].guest_spi == 100


def test_dtc_warnings_are_errors() -> None:
    with pytest.raises(GuestError, match="reg_format"):
        compile_dts("/dts-v1/;\n/ { #address-cells = <2>; #size-cells = <2>;"
                    " n@0 { reg = <0 0>; }; };\n")
