"""Driver declarations: the registry loads every built-in, and every declaration is complete.

These tests read the declarations themselves (no device tree); the real-DTB checks are in
``test_declarations_dtbs.py``, trap behaviour in ``test_declarations_traps.py`` and plugin
registration in ``test_declarations_plugins.py``.
"""

from __future__ import annotations

import importlib
import itertools
import re
from collections import defaultdict

import pytest

from platpass.drivers import BUILTIN_MODULES
from platpass.drivers.common import MaskedRegisterDriver, PlatformDriver
from platpass.drivers.registry import DriverRegistry, default_registry, drivers_of_module

#: Families a declaration may name (common.PlatformDriver.family lists them).
FAMILIES = {"uart", "rtc", "gpio", "watchdog", "i2c", "spi", "pwm", "adc", "serial-engine"}

#: The declarations issue 2 asks for by name, and who must claim them.
REQUIRED = {
    "arm,sbsa-gwdt": "watchdog",
    "snps,dw-apb-uart": "uart",
    "snps,dw-wdt": "watchdog",
    "rockchip,gpio-bank": "gpio",
    "rockchip,rk3399-i2c": "i2c",
    "rockchip,rk3328-pwm": "pwm",
    "rockchip,rk3399-saradc": "adc",
    "fsl,imx35-gpio": "gpio",
    "fsl,imx6q-uart": "uart",
    "fsl,imx21-uart": "uart",
    "fsl,imx21-i2c": "i2c",
    "fsl,imx21-wdt": "watchdog",
    "fsl,imx27-pwm": "pwm",
    "allwinner,sun6i-a31-wdt": "watchdog",
    "allwinner,sun6i-a31-rtc": "rtc",
    "allwinner,sun6i-a31-i2c": "i2c",
    "amlogic,meson-gx-uart": "uart",
    "amlogic,meson-ao-uart": "uart",
    "marvell,armada-380-rtc": "rtc",
    "marvell,armada-8k-rtc": "rtc",
    "marvell,armada-3700-uart": "uart",
    "xlnx,zynqmp-gpio-1.0": "gpio",
    "cdns,uart-r1p12": "uart",
    "xlnx,zynqmp-uart": "uart",
    "xlnx,zynqmp-rtc": "rtc",
}

GENI = ("qcom,geni-se-qup", "qcom,geni-uart", "qcom,geni-debug-uart", "qcom,geni-i2c",
        "qcom,geni-spi")

#: Where evidence must point: a Linux driver source or a DT binding.
_EVIDENCE_SOURCE = re.compile(r"drivers/[\w/.,-]+\.c|Documentation/devicetree/bindings/\S+")


def _builtin_drivers() -> list[type[PlatformDriver]]:
    drivers: list[type[PlatformDriver]] = []
    for name in BUILTIN_MODULES:
        drivers.extend(drivers_of_module(importlib.import_module(f"platpass.drivers.{name}")))
    return drivers


ALL = _builtin_drivers()
#: Compatibles that bindings define without a vendor prefix (serial/8250.yaml).
VENDORLESS_COMPATIBLES = frozenset({"ns16550a", "ns16550", "ns8250"})


def test_registry_loads_every_builtin_without_clash() -> None:
    registry = default_registry(plugins=False)
    assert set(registry.drivers) == set(ALL)
    claimed = [c for driver in ALL for c in driver.compatibles]
    assert len(claimed) == len(set(claimed)), "a compatible is listed twice"
    assert set(registry.compatibles) == set(claimed)


def test_driver_names_are_unique() -> None:
    names = [driver.name for driver in ALL]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("driver", ALL, ids=lambda d: d.name)
def test_declaration_is_complete(driver: type[PlatformDriver]) -> None:
    assert driver.family in FAMILIES
    assert isinstance(driver.compatibles, tuple) and driver.compatibles
    assert all(isinstance(c, str) and ("," in c or c in VENDORLESS_COMPATIBLES)
               for c in driver.compatibles)
    assert _EVIDENCE_SOURCE.search(driver.evidence), driver.evidence
    assert isinstance(driver.cannot_master_bus, bool)


@pytest.mark.parametrize("driver", ALL, ids=lambda d: d.name)
def test_traps_are_sorted_disjoint_and_named(driver: type[PlatformDriver]) -> None:
    traps = driver.traps + driver.dma_traps
    by_region = defaultdict(list)
    for trap in traps:
        assert trap.size > 0 and trap.offset >= 0 and trap.region >= 0
        assert trap.why
        by_region[trap.region].append(trap)
    for region_traps in by_region.values():
        ordered = sorted(region_traps, key=lambda t: t.offset)
        for before, after in itertools.pairwise(ordered):
            assert before.offset + before.size <= after.offset, (before, after)
    for group in (driver.traps, driver.dma_traps):
        offsets = [(t.region, t.offset) for t in group]
        assert offsets == sorted(offsets), "declare traps in register order"
    names = [t.name for t in traps]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("driver", ALL, ids=lambda d: d.name)
def test_masks_and_protections_name_declared_traps(driver: type[PlatformDriver]) -> None:
    if not issubclass(driver, MaskedRegisterDriver):
        return
    by_name = {t.name: t for t in driver.traps + driver.dma_traps}
    for name, bits in driver.masked_bits.items():
        assert name in by_name
        assert 0 < bits < 1 << (8 * by_name[name].size), "mask wider than its register"
    assert driver.write_protected <= set(by_name)
    assert not driver.write_protected & set(driver.masked_bits)


@pytest.mark.parametrize("driver", ALL, ids=lambda d: d.name)
def test_reset_writes_fit_their_width(driver: type[PlatformDriver]) -> None:
    for step in driver.reset_sequence:
        assert step.size in (1, 2, 4, 8)
        assert step.offset % step.size == 0, "reset writes must be naturally aligned"
        assert 0 <= step.value < 1 << (8 * step.size)


@pytest.mark.parametrize("driver", ALL, ids=lambda d: d.name)
def test_reset_clears_every_fully_trapped_dma_register(driver: type[PlatformDriver]) -> None:
    """A DMA-enable register the guest cannot reach may still hold what the host left in it;
    only the reset sequence can clear it (masked registers are cleared by read-modify-write).
    """
    masked = getattr(driver, "masked_bits", {})
    protected = getattr(driver, "write_protected", frozenset())
    for trap in driver.dma_traps:
        if trap.name in masked or trap.name in protected:
            continue
        assert any(trap.covers(step.region, step.offset, step.size)
                   for step in driver.reset_sequence), (driver.name, trap.name)


def test_issue_families_are_declared() -> None:
    registry = default_registry(plugins=False)
    for compatible, family in REQUIRED.items():
        driver = registry.match([compatible])
        assert driver is not None, compatible
        assert driver.family == family
        assert driver.cannot_master_bus


def test_geni_serial_engines_are_declared_bus_masters() -> None:
    registry = default_registry(plugins=False)
    for compatible in GENI:
        driver = registry.match([compatible])
        assert driver is not None, compatible
        assert driver.cannot_master_bus is False
        assert "qcom-geni-se.c" in driver.evidence
        assert "geni_se_tx_dma_prep" in driver.evidence


def test_most_specific_compatible_wins() -> None:
    registry = default_registry(plugins=False)
    # A Rockchip UART lists its SoC string first; the DW fallback claims it.
    assert registry.match(["rockchip,rk3568-uart", "snps,dw-apb-uart"]).name == (
        "snps-dw-apb-uart")
    # The SBSA UART is a PL011 subset without DMACR: its own declaration wins...
    lx2160a = registry.match(["arm,sbsa-uart", "arm,pl011"])
    assert lx2160a.name == "arm-sbsa-uart"
    # ...but the node also says PL011, so the PL011's UARTDMACR trap is never lost (LX2160A)
    assert [t.name for t in lx2160a.traps] == ["UARTDMACR"]
    assert "whose traps are kept: UARTDMACR" in lx2160a.evidence
    assert registry.match(["arm,sbsa-uart"]).traps == ()
    assert registry.match(["arm,sbsa-uart", "arm,pl011"]) is lx2160a  # built once
    assert registry.match(["vendor,unknown-thing"]) is None


def test_a_less_specific_bus_master_declaration_wins() -> None:
    class Slave(PlatformDriver):
        name = "slave"
        compatibles = ("vendor,slave",)
        family = "uart"
        evidence = "registers only"

    class Master(PlatformDriver):
        name = "master"
        compatibles = ("vendor,master",)
        family = "uart"
        evidence = "has its own DMA"
        cannot_master_bus = False

    registry = DriverRegistry([Slave, Master])
    assert registry.match(["vendor,slave"]) is Slave
    combined = registry.match(["vendor,slave", "vendor,master"])
    assert combined.name == "slave" and not combined.cannot_master_bus


def test_armada_3700_spi_masks_dma_rd_en() -> None:
    from platpass.drivers.marvell import A3700_SPI_DMA_RD_EN, A3700_SPI_IF_CFG

    driver = default_registry(plugins=False).match(["marvell,armada-3700-spi"])
    (trap,) = driver.traps
    assert (trap.region, trap.offset, trap.name) == (0, A3700_SPI_IF_CFG, "IF_CFG")
    assert driver.masked_bits == {"IF_CFG": 1 << 18} and A3700_SPI_DMA_RD_EN == 1 << 18


def test_registry_refuses_a_clash_and_an_incomplete_declaration() -> None:
    from platpass.errors import DriverError

    registry = DriverRegistry(ALL)

    class Impostor(PlatformDriver):
        name = "impostor"
        compatibles = ("snps,dw-apb-uart",)
        family = "uart"
        evidence = "drivers/tty/serial/impostor.c"

    with pytest.raises(DriverError, match="claimed by both"):
        registry.register(Impostor)

    class NoEvidence(PlatformDriver):
        name = "no-evidence"
        compatibles = ("vendor,no-evidence",)
        family = "uart"

    with pytest.raises(DriverError, match="evidence"):
        registry.register(NoEvidence)
    assert registry.match(["vendor,no-evidence"]) is None
