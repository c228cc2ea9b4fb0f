"""Fixtures of the guest layer: hand-built host nodes, real drivers' stand-ins, QEMU's DTB."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from platpass.drivers.common import PlatformDriver
from platpass.firmware.model import Clock, DeviceNode, Interrupt, IrqType, MmioRange, Trigger


class Pl031Stand(PlatformDriver):
    """A declaration-only driver for the tests' PL031 (the register-level one is elsewhere)."""

    name = "test-pl031"
    compatibles = ("arm,pl031",)
    family = "rtc"
    evidence = "test declaration"


class UartStand(PlatformDriver):
    """A driver that drops one more property and rewrites another, as drivers may."""

    name = "test-dw-uart"
    compatibles = ("snps,dw-apb-uart",)
    family = "uart"
    evidence = "test declaration"
    guest_drop_properties = ("snps,uart-16550-compatible",)

    def guest_properties(self, properties):
        props = dict(properties)
        props["reg-io-width"] = (4).to_bytes(4, "big")
        return props


def cells(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "big") for v in values)


def pl031_node(address: int = 0x1C170000, spi: int = 4) -> DeviceNode:
    return DeviceNode(
        path=f"/bus@8000000/rtc@{address:x}",
        compatible=("arm,pl031", "arm,primecell"),
        status="okay",
        is_mmio=True,
        regions=(MmioRange(address, 0x1000),),
        interrupts=(Interrupt("/interrupt-controller@2c001000", (0, spi, 4), IrqType.SPI, spi,
                              Trigger.LEVEL_HIGH),),
        clocks=(Clock("/clk24mhz", (), "apb_pclk", 24_000_000),),
        properties={
            "compatible": b"arm,pl031\0arm,primecell\0",
            "reg": cells(0, address, 0, 0x1000),
            "interrupts": cells(0, spi, 4),
            "clocks": cells(7),
            "clock-names": b"apb_pclk\0",
            "phandle": cells(40),
        },
        phandle=40,
    )


def uart_node() -> DeviceNode:
    """A Rockchip-style DesignWare UART: sub-page, level-low, CRU clocks, DMA, pins, GRF."""
    return DeviceNode(
        path="/serial@ff1a0400",
        compatible=("rockchip,rk3399-uart", "snps,dw-apb-uart"),
        status="okay",
        is_mmio=True,
        regions=(MmioRange(0xFF1A0400, 0x100),),
        interrupts=(Interrupt("/interrupt-controller@fee00000", (0, 100, 8), IrqType.SPI, 100,
                              Trigger.LEVEL_LOW),),
        clocks=(Clock("/clock-controller@ff760000", (77,), "baudclk", None),
                Clock("/clock-controller@ff760000", (350,), "apb_pclk", None)),
        properties={
            "compatible": b"rockchip,rk3399-uart\0snps,dw-apb-uart\0",
            "reg": cells(0, 0xFF1A0400, 0, 0x100),
            "interrupts": cells(0, 100, 8),
            "clocks": cells(3, 77, 3, 350),
            "clock-names": b"baudclk\0apb_pclk\0",
            "assigned-clocks": cells(3, 77),
            "assigned-clock-rates": cells(48_000_000),
            "reg-shift": cells(2),
            "reg-io-width": cells(1),
            "snps,uart-16550-compatible": b"",
            "dmas": cells(9, 2, 9, 3),
            "dma-names": b"tx\0rx\0",
            "pinctrl-names": b"default\0",
            "pinctrl-0": cells(11, 12),
            "power-domains": cells(13, 5),
            "resets": cells(3, 99),
            "reset-names": b"uart\0",
            "iommus": cells(14),
            "vcc-supply": cells(15),
            "rts-gpios": cells(16, 3, 0),
            "rockchip,grf": cells(17),
            "status": b"okay\0",
        },
    )


HOST_PHANDLES = frozenset({3, 7, 9, 11, 12, 13, 14, 15, 16, 17, 40})


@pytest.fixture
def pl031() -> DeviceNode:
    return pl031_node()


@pytest.fixture
def uart() -> DeviceNode:
    return uart_node()


@pytest.fixture
def host_phandles() -> frozenset[int]:
    return HOST_PHANDLES


@pytest.fixture
def drivers() -> dict[str, type[PlatformDriver]]:
    return {"pl031": Pl031Stand, "uart": UartStand}


@pytest.fixture(scope="session")
def qemu_virt_dtb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QEMU's own ``virt`` machine DTB, dumped by the installed qemu-system-aarch64."""
    qemu = shutil.which("qemu-system-aarch64")
    if qemu is None:
        pytest.skip("qemu-system-aarch64 not installed (scripts/install --test installs it)")
    path = tmp_path_factory.mktemp("virt") / "virt.dtb"
    subprocess.run([qemu, "-M", f"virt,dumpdtb={path}", "-cpu", "cortex-a57", "-nic", "none",
                    "-display", "none"], check=True, capture_output=True, timeout=60)
    return path
