"""``platpass guest-dt`` end to end on real board trees."""

from __future__ import annotations

import json
from pathlib import Path

import libfdt
import pytest

from platpass.cli import main
from platpass.guest.dts import cells_of
from platpass.guest.placement import GuestPlacement
from platpass.host.simulated.board import board_dts_path
from real_dtbs import DTB_DIR

DTBS = DTB_DIR
RK3568 = str(DTBS / "rockchip__rk3568-evb1-v10.dtb")
JUNO = str(DTBS / "arm__juno-scmi.dtb")
#: Juno's I2C carries the HDMI transmitters its HDLCDs use (REFUSED_HOST_IN_USE); these tests
#: are about output formats, so they waive that, as a user who has no display would.
WAIVE = ["--override", "/i2c@7ffa0000=host-consumer,needs-host-resource"]


def test_crosvm_overlay_and_placement_record(tmp_path: Path, capsys) -> None:
    out, rec = tmp_path / "uart.dtbo", tmp_path / "guest.json"
    argv = ["guest-dt", "/serial@fdd50000", "/i2c@fe5b0000", "--dtb", RK3568,
            "--flavour", "crosvm", "--clock-rate", "baudclk=24000000",
            "--clock-rate", "*=100M", "--placement", str(rec), "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"--device-tree-overlay {out},filter" in printed
    assert "--vfio /sys/bus/platform/devices/fdd50000.serial,dt-symbol=serial_fdd50000" \
        in printed
    assert "dmas" in printed and "pinctrl-0" in printed  # reported as dropped
    record = GuestPlacement.from_json(rec.read_text())
    uart = record.device("/serial@fdd50000")
    assert uart.regions[0].guest_address == 0xC000000
    assert uart.interrupts[0].guest_spi == 112
    fdt = libfdt.FdtRo(out.read_bytes())
    node = fdt.path_offset("/fragment@0/__overlay__/serial@c000000")
    assert cells_of(bytes(fdt.getprop(node, "interrupts"))) == (0, 112, 4)
    # a second run with the same record keeps the first device where it was
    out2 = tmp_path / "more.dtbo"
    assert main(["guest-dt", "/serial@fdd50000", "/i2c@fe5c0000", "--dtb", RK3568,
                 "--flavour", "crosvm", "--clock-rate", "*=100M", "--placement", str(rec),
                 "-o", str(out2)]) == 0
    again = GuestPlacement.from_json(rec.read_text())
    assert again.device("/serial@fdd50000") == uart
    new = again.device("/i2c@fe5c0000")
    assert new.regions[0].guest_address not in (
        r.guest_address for d in record.devices for r in d.regions)
    assert json.loads(rec.read_text())["platpass_guest_placement"] == 1


def test_unknown_rate_refused_and_nothing_written(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.dtbo"
    assert main(["guest-dt", "/serial@fdd50000", "--dtb", RK3568, "--flavour", "crosvm",
                 "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no rate is known for clock 0 ('baudclk')" in err and "--clock-rate" in err
    assert not out.exists()


def test_refused_device_shows_verdict_and_evidence(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.dtbo"
    assert main(["guest-dt", "/iommu@2b600000", "/i2c@7ffa0000", "--dtb", JUNO, *WAIVE,
                 "--flavour", "crosvm", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "/iommu@2b600000: REFUSED_" in err
    assert not out.exists()
    assert main(["guest-dt", "/nope", "--dtb", JUNO, "--flavour", "crosvm",
                 "-o", str(out)]) == 1
    assert "no such node" in capsys.readouterr().err


def test_xen_partial_tree_and_xl_lines(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pt.dtb"
    assert main(["guest-dt", "/i2c@7ffa0000", "--dtb", JUNO, *WAIVE, "--flavour", "xen",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'dtdev = [ "/i2c@7ffa0000" ]' in printed
    assert 'iomem = [ "7ffa0,1@c000" ]' in printed
    assert "irqs = [ 136 ]" in printed  # host SPI 104 + 32
    fdt = libfdt.FdtRo(out.read_bytes())
    node = fdt.path_offset("/passthrough/i2c@c000000")
    assert cells_of(bytes(fdt.getprop(node, "interrupts"))) == (0, 104, 4)


def test_qemu_needs_a_base_and_dts_format(tmp_path: Path, capsys, qemu_virt_dtb) -> None:
    out = tmp_path / "virt.dts"
    assert main(["guest-dt", "/i2c@7ffa0000", "--dtb", JUNO, *WAIVE, "--flavour", "qemu",
                 "-o", str(out)]) == 1
    assert "needs --base-dtb" in capsys.readouterr().err
    assert main(["guest-dt", "/i2c@7ffa0000", "--dtb", JUNO, *WAIVE, "--flavour", "qemu",
                 "--base-dtb", str(qemu_virt_dtb), "--format", "dts", "-o", str(out)]) == 0
    text = out.read_text()
    assert "i2c_7ffa0000: i2c@c001000 {" in text  # c000000 is platform-bus's unit address
    assert "interrupt-parent = <0x8002>;" in text


@pytest.mark.parametrize("bad", [["--clock-rate", "x"], ["--clock-rate", "a=0"],
                                 ["--clock-rate", "a=fast"]])
def test_bad_clock_rate_arguments(tmp_path: Path, capsys, bad) -> None:
    assert main(["guest-dt", "/i2c@7ffa0000", "--dtb", JUNO, *WAIVE, "--flavour", "crosvm",
                 *bad, "-o", str(tmp_path / "o")]) == 1
    assert "--clock-rate" in capsys.readouterr().err


def test_live_clock_rates_from_debugfs_layout(tmp_path: Path) -> None:
    from platpass.cli.guest_dt import live_clock_rates, provider_names
    from platpass.firmware.devicetree import load_dtb

    tree = load_dtb(RK3568)
    node = tree.node("/serial@fdd50000")
    names = provider_names(tree, [node])
    assert set(names) == {c.provider for c in node.clocks}
    # a debugfs-like tree holding only some of the candidate clocks, one unreadable
    first = next(iter(names.values()))[0]
    (tmp_path / first).mkdir()
    (tmp_path / first / "clk_rate").write_text("24000000\n")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "clk_rate").write_text("fast\n")
    rates = live_clock_rates(names | {"/x": ("junk", "../etc")}, root=tmp_path)
    assert rates == {first: 24_000_000}


def test_simulated_board(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sim.dts"
    assert main(["guest-dt", "/soc@9000000/rtc@20000", "--sim", "--flavour", "crosvm",
                 "--format", "dts", "-o", str(out)]) == 0
    text = out.read_text()
    assert "rtc_9020000: rtc@c000000 {" in text
    assert "interrupts = <0x0 0x70 0x4>;" in text


def test_page_size_must_match_the_record(tmp_path: Path, capsys) -> None:
    rec = tmp_path / "g.json"
    base = ["guest-dt", "/i2c@7ffa0000", "--dtb", JUNO, *WAIVE, "--flavour", "crosvm",
            "--placement", str(rec), "-o", str(tmp_path / "o")]
    assert main([*base, "--page-size", "0x10000"]) == 0
    assert GuestPlacement.from_json(rec.read_text()).page_size == 0x10000
    before = rec.read_text()
    assert main([*base, "--page-size", "0x1000"]) == 1
    assert "made for 0x10000-byte pages" in capsys.readouterr().err
    assert rec.read_text() == before
    with pytest.raises(SystemExit):
        main([*base, "--page-size", "12345"])


SPI_BOARD = str(board_dts_path("sim-pci-spi.dts"))
SPI = "/soc@9000000/spi@60000"


def test_qemu_pci_slot_puts_the_controller_and_its_child_under_the_host_bridge(
        tmp_path: Path, capsys, qemu_virt_dtb) -> None:
    out, rec = tmp_path / "guest.dtb", tmp_path / "guest.json"
    assert main(["guest-dt", SPI, "--dts", SPI_BOARD, "--flavour", "qemu",
                 "--base-dtb", str(qemu_virt_dtb), "--pci-slot", f"{SPI}=1a.2",
                 "--placement", str(rec), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert '"addr": "1a.2"' in printed and "vfio-user-pci" in printed
    fdt = libfdt.FdtRo(out.read_bytes())
    host_bridge = next(name for name in map(fdt.get_name, _root_children(fdt))
                       if name.startswith("pcie@"))   # QEMU virt's ECAM host bridge
    node = fdt.path_offset(f"/{host_bridge}/spi@1a,2")
    assert cells_of(bytes(fdt.getprop(node, "reg"))) == (0x1A << 11 | 2 << 8, 0, 0, 0, 0)
    assert bytes(fdt.getprop(node, "compatible")) == b"pci177d,a00b\0"
    for gone in ("interrupts", "interrupt-parent"):
        assert fdt.getprop(node, gone, quiet=(libfdt.NOTFOUND,)) == -libfdt.NOTFOUND
    clock = fdt.node_offset_by_phandle(cells_of(bytes(fdt.getprop(node, "clocks")))[0])
    assert cells_of(bytes(fdt.getprop(clock, "clock-frequency"))) == (100_000_000,)
    child = fdt.path_offset(f"/{host_bridge}/spi@1a,2/eeprom@0")   # copied, not written
    assert bytes(fdt.getprop(child, "compatible")) == b"atmel,at25\0"
    assert cells_of(bytes(fdt.getprop(child, "size"))) == (1024,)
    # a PCI function takes no MMIO window space or SPI: nothing is recorded for it
    assert GuestPlacement.from_json(rec.read_text()).devices == ()


@pytest.mark.parametrize("extra,message", [
    (["--pci-slot", f"{SPI}=20"], "slot is 0-1f"),
    (["--pci-slot", f"{SPI}=2.8"], "slot is 0-1f and function 0-7"),
    (["--pci-slot", f"{SPI}"], "expected NODE=SLOT"),
    (["--pci-slot", "/soc@9000000=2"], "not one of the devices given"),
    (["--pci-slot", f"{SPI}=2", "--pci-id", "115d:0101"], "no PCI identity fits"),
])
def test_qemu_pci_slot_errors(tmp_path: Path, capsys, qemu_virt_dtb, extra, message) -> None:
    out = tmp_path / "guest.dtb"
    assert main(["guest-dt", SPI, "--dts", SPI_BOARD, "--flavour", "qemu",
                 "--base-dtb", str(qemu_virt_dtb), *extra, "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_pci_slot_is_for_qemu_only(tmp_path: Path, capsys) -> None:
    assert main(["guest-dt", SPI, "--dts", SPI_BOARD, "--flavour", "crosvm",
                 "--pci-slot", f"{SPI}=2", "-o", str(tmp_path / "x")]) != 0
    assert "--pci-slot apply to --flavour qemu only" in capsys.readouterr().err


def _root_children(fdt: libfdt.FdtRo):
    offset = fdt.first_subnode(0, quiet=(libfdt.NOTFOUND,))
    while offset >= 0:
        yield offset
        offset = fdt.next_subnode(offset, quiet=(libfdt.NOTFOUND,))
