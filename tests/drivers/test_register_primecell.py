"""The PrimeCell drivers give a Linux guest a node its amba bus can bind."""

from __future__ import annotations

import pytest

from platpass.drivers.arm_primecell import PrimeCellDriver
from platpass.drivers.registry import default_registry
from platpass.firmware.model import Clock, DeviceNode
from platpass.host.simulated.board import load_board

PRIMECELLS = ("serial@0", "rtc@20000", "gpio@30000", "watchdog@40000")


@pytest.mark.parametrize("name", PRIMECELLS)
def test_guest_compatible_gains_primecell_when_apb_pclk_exists(name):
    node = load_board().node(f"/soc@9000000/{name}")
    driver = default_registry(plugins=False).match(node.compatible)(node)
    assert isinstance(driver, PrimeCellDriver)
    raw = node.properties["compatible"]
    out = driver.guest_properties({"compatible": raw, "other": b"\x00\x00\x00\x01"})
    assert out["compatible"] == raw + b"arm,primecell\0"
    assert out["other"] == b"\x00\x00\x00\x01"
    again = driver.guest_properties(out)
    assert again["compatible"] == out["compatible"]        # never twice


def test_no_apb_pclk_no_primecell():
    node = DeviceNode("/uart", ("arm,pl011",), "okay", True,
                      clocks=(Clock("/clk", (), "uartclk", 24_000_000),),
                      properties={"compatible": b"arm,pl011\0"})
    driver = default_registry(plugins=False).match(node.compatible)(node)
    assert driver.guest_properties(dict(node.properties)) == {"compatible": b"arm,pl011\0"}


def test_the_16550_is_not_a_primecell():
    node = load_board().node("/soc@9000000/serial@50000")
    driver = default_registry(plugins=False).match(node.compatible)(node)
    assert not isinstance(driver, PrimeCellDriver)
    assert driver.guest_properties({"compatible": b"ns16550a\0"}) == {
        "compatible": b"ns16550a\0"}
