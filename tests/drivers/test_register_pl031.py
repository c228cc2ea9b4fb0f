"""The PL031 driver: nothing trapped; reset stops the alarm but keeps the board's time."""

from __future__ import annotations

import pytest
from register_bench import SOC, open_bench

from platpass.drivers.arm_pl031 import ArmPl031, Reg


@pytest.fixture
def bench():
    b = open_bench(f"{SOC}/rtc@20000")
    yield b
    b.close()


def test_declaration(bench):
    assert isinstance(bench.driver, ArmPl031)
    assert bench.driver.active_traps() == ()
    assert "rtc-pl031.c" in bench.driver.evidence


def test_reset_clears_alarm_and_interrupt_but_not_time(bench):
    regs = bench.backend
    regs.write(0, Reg.LR, 4, 1000)
    regs.write(0, Reg.MR, 4, 1001)
    regs.write(0, Reg.IMSC, 4, 1)
    bench.clock.advance(1.0)
    assert regs.read(0, Reg.MIS, 4) == 1 and regs.line(0)
    bench.driver.reset(regs)
    assert regs.read(0, Reg.RIS, 4) == 0
    assert regs.read(0, Reg.IMSC, 4) == 0
    assert regs.read(0, Reg.MR, 4) == 0
    assert regs.read(0, Reg.DR, 4) == 1001
    assert not regs.line(0)
    bench.clock.advance(5.0)
    assert regs.read(0, Reg.DR, 4) == 1006
    assert regs.read(0, Reg.RIS, 4) == 0
