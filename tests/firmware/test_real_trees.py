"""Every real board DTB and QEMU's virt DTB load and resolve; samples checked by hand.

The expected values below were read from ``dtc -I dtb -O dts`` of the same files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from platpass.firmware.devicetree import DeviceTree, load_dtb
from platpass.firmware.model import IrqType, MmioRange, Trigger

#: Problems that are facts of the shipped DTBs, checked in the decompiled source:
#: TI's sci-intr nodes have a reg outside every window of their bus (Linux never maps it),
#: and the Armada SPI's second reg is an MBus window that the parent's ranges omit.
KNOWN_FIRMWARE_PROBLEMS = {
    ("marvell__cn9130-crb-A.dtb", "/cp0/config-space@f2000000/spi@700680"),
    ("ti__k3-am642-evm.dtb", "/bus@f4000/interrupt-controller@a00000"),
    ("ti__k3-am6528-iot2050-basic-pg2.dtb", "/bus@100000/interrupt-controller@a00000"),
    ("ti__k3-am654-base-board.dtb", "/bus@100000/interrupt-controller@a00000"),
}


@pytest.fixture(scope="module")
def trees(shared_dtbs: list[Path]) -> dict[str, DeviceTree]:
    return {path.name: load_dtb(path) for path in shared_dtbs}


def test_every_shared_dtb_loads_and_resolves(trees: dict[str, DeviceTree]) -> None:
    assert len(trees) >= 40
    unexpected = []
    for name, tree in trees.items():
        devices = tree.devices()
        assert devices, name
        for node in tree.devices(all=True):
            if node.problems and (name, node.path) not in KNOWN_FIRMWARE_PROBLEMS:
                unexpected.append((name, node.path, node.problems))
        for node in devices:
            assert node.regions, (name, node.path)
            wants_irq = "interrupts" in node.properties or (
                "interrupts-extended" in node.properties)
            if node.enabled and wants_irq and (name, node.path) not in KNOWN_FIRMWARE_PROBLEMS:
                assert node.interrupts, (name, node.path, node.problems)
    assert unexpected == []


def test_rk3568_uart2(trees: dict[str, DeviceTree]) -> None:
    node = trees["rockchip__rk3568-evb1-v10.dtb"].node("serial2")
    assert node.path == "/serial@fe660000"
    assert node.compatible == ("rockchip,rk3568-uart", "snps,dw-apb-uart")
    assert node.regions == (MmioRange(0xFE660000, 0x100),)
    (irq,) = node.interrupts
    assert (irq.controller, irq.type, irq.number, irq.trigger) == (
        "/interrupt-controller@fd400000", IrqType.SPI, 118, Trigger.LEVEL_HIGH)
    assert [c.name for c in node.clocks] == ["baudclk", "apb_pclk"]
    assert node.clocks[0].provider == "/clock-controller@fdd20000"
    assert node.clocks[0].specifier == (291,)


def test_imx8mm_uart2_through_two_buses(trees: dict[str, DeviceTree]) -> None:
    tree = trees["freescale__imx8mm-venice-gw7903.dtb"]
    node = tree.node("/soc@0/bus@30800000/spba-bus@30800000/serial@30890000")
    assert node.regions == (MmioRange(0x30890000, 0x10000),)
    (irq,) = node.interrupts
    assert (irq.controller, irq.type, irq.number, irq.trigger) == (
        "/soc@0/interrupt-controller@38800000", IrqType.SPI, 27, Trigger.LEVEL_HIGH)


def test_sc7180_geni_uart_under_its_wrapper(trees: dict[str, DeviceTree]) -> None:
    tree = trees["qcom__sc7180-trogdor-lazor-r1-kb.dtb"]
    node = tree.node("/soc@0/geniqup@ac0000/serial@a88000")
    assert node.compatible == ("qcom,geni-debug-uart",)
    assert node.regions == (MmioRange(0xA88000, 0x4000),)
    (irq,) = node.interrupts
    assert (irq.type, irq.number, irq.trigger) == (IrqType.SPI, 355, Trigger.LEVEL_HIGH)


def test_lx2160a_extirq_is_a_controller_not_a_nexus(trees: dict[str, DeviceTree]) -> None:
    # fsl,ls1088a-extirq carries an interrupt-map in its driver's own format; Linux stops
    # at the controller, and so do we.
    node = trees["freescale__fsl-lx2160a-rdb.dtb"].node("/soc/i2c@2040000/rtc@51")
    (irq,) = node.interrupts
    assert irq.controller.endswith("/interrupt-controller@14")
    assert (irq.number, irq.trigger) == (8, Trigger.LEVEL_LOW)
    assert not node.is_mmio


def test_qemu_virt_primecells(qemu_virt_dtb: Path) -> None:
    tree = load_dtb(qemu_virt_dtb)
    found = {n.compatible[0]: n for n in tree.devices() if n.compatible}
    expected = {"arm,pl011": (0x9000000, 1), "arm,pl031": (0x9010000, 2),
                "arm,pl061": (0x9030000, 7)}
    for compatible, (address, spi) in expected.items():
        node = found[compatible]
        assert node.is_primecell
        assert node.regions == (MmioRange(address, 0x1000),)
        (irq,) = node.interrupts
        assert (irq.type, irq.number, irq.trigger) == (IrqType.SPI, spi, Trigger.LEVEL_HIGH)
        assert irq.controller == "/intc@8000000"
    pl011 = found["arm,pl011"]
    assert [c.rate for c in pl011.clocks] == [24_000_000, 24_000_000]
    # the PCIe host's children would be PCI functions, never platform MMIO devices
    assert all(not n.path.startswith("/pcie@10000000/") for n in tree.devices())
