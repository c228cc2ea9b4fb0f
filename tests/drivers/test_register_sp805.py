"""The SP805 driver: the lock is the device's own; reset unlocks, stops, relocks."""

from __future__ import annotations

import pytest
from register_bench import SOC, open_bench

from platpass.drivers.arm_sp805 import UNLOCK_KEY, ArmSp805, Reg
from platpass.vfio_device.device import VfioDevice


@pytest.fixture
def bench():
    b = open_bench(f"{SOC}/watchdog@40000")
    yield b
    b.close()


def arm_watchdog(regs, load: int = 1000) -> None:
    regs.write(0, Reg.LOCK, 4, UNLOCK_KEY)
    regs.write(0, Reg.LOAD, 4, load)
    regs.write(0, Reg.CONTROL, 4, 0x3)            # INTEN | RESEN
    regs.write(0, Reg.LOCK, 4, 0)


def test_nothing_trapped_and_lock_reaches_the_device(bench):
    assert isinstance(bench.driver, ArmSp805)
    assert bench.driver.active_traps() == ()
    device = VfioDevice(bench.node, bench.driver, bench.backend, bench.reactor)
    device.write(0, Reg.LOCK, 4, 0)
    device.write(0, Reg.LOAD, 4, 5)               # locked: ignored by the device itself
    assert device.read(0, Reg.LOAD, 4) == 0xFFFFFFFF
    device.write(0, Reg.LOCK, 4, UNLOCK_KEY)
    device.write(0, Reg.LOAD, 4, 5)
    assert device.read(0, Reg.LOAD, 4) == 5
    device.close()


def test_reset_stops_a_running_locked_watchdog_and_relocks(bench):
    regs = bench.backend
    model = regs.model
    arm_watchdog(regs)
    bench.clock.advance(0.0011)                   # first timeout: interrupt pending
    assert regs.line(0) and regs.read(0, Reg.LOCK, 4) == 1
    bench.driver.reset(regs)
    assert not model.running
    assert regs.read(0, Reg.RIS, 4) == 0 and not regs.line(0)
    assert regs.read(0, Reg.CONTROL, 4) == 0
    assert regs.read(0, Reg.LOAD, 4) == 0xFFFFFFFF
    assert regs.read(0, Reg.LOCK, 4) == 1
    bench.clock.advance(10.0)
    assert model.resets == 0                      # never bites after reset
    assert model.live_timers == 0


def test_reset_clears_integration_test_mode(bench):
    regs = bench.backend
    regs.write(0, Reg.ITCR, 4, 1)
    regs.write(0, Reg.ITOP, 4, 0x3)
    assert regs.model.reset_asserted and regs.line(0)
    bench.driver.reset(regs)
    assert not regs.model.reset_asserted and not regs.line(0)
