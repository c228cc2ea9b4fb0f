"""The PL061 driver: GPIOAFSEL reads through and ignores writes; reset releases every pin."""

from __future__ import annotations

import pytest
from register_bench import SOC, open_bench

from platpass.drivers.arm_pl061 import ArmPl061, Reg
from platpass.vfio_device.device import VfioDevice


@pytest.fixture
def bench():
    b = open_bench(f"{SOC}/gpio@30000")
    yield b
    b.close()


def test_afsel_is_read_through_and_write_ignored(bench):
    assert isinstance(bench.driver, ArmPl061)
    device = VfioDevice(bench.node, bench.driver, bench.backend, bench.reactor)
    bench.backend.write(0, Reg.AFSEL, 1, 0x30)   # the board routed pins 4-5 elsewhere
    assert device.read(0, Reg.AFSEL, 1) == 0x30
    device.write(0, Reg.AFSEL, 1, 0xFF)
    device.write(0, Reg.AFSEL, 4, 0x00)
    assert bench.backend.model.afsel == 0x30
    device.close()


def test_reset_releases_pins_and_clears_interrupts(bench):
    regs = bench.backend
    model = regs.model
    regs.write(0, Reg.DIR, 1, 0x0F)
    regs.write(0, 0x3FC, 1, 0x0A)                 # drive pins 1 and 3 high
    regs.write(0, Reg.IS, 1, 0x80)                # pin 7 level-high
    regs.write(0, Reg.IEV, 1, 0xF0)
    regs.write(0, Reg.IBE, 1, 0x20)
    regs.write(0, Reg.IE, 1, 0xF0)
    model.drive(4, True)                          # a latched edge
    model.drive(7, True)                          # and an active level
    assert regs.line(0)
    bench.driver.reset(regs)
    assert regs.read(0, Reg.DIR, 1) == 0
    assert model.pins & 0x0F == 0                 # no pad driven by the chip any more
    assert [regs.read(0, r, 1) for r in (Reg.IS, Reg.IBE, Reg.IEV, Reg.IE)] == [0, 0, 0, 0]
    assert regs.read(0, Reg.RIS, 1) == 0
    assert regs.read(0, Reg.MIS, 1) == 0
    assert not regs.line(0)
    regs.write(0, Reg.DIR, 1, 0x01)               # the next guest's output starts low
    assert model.pins & 0x01 == 0
