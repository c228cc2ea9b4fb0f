"""PL031 model driven the way Linux's rtc-pl031 does: read DR, set LR, alarm via MR/IMSC."""

from __future__ import annotations

import pytest
from sim_helpers import IrqRecorder, Regs

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.pl031 import Pl031, Reg


@pytest.fixture
def rtc():
    clock = ManualClock(start=1000.25)
    model = Pl031(clock, initial=1_700_000_000)
    backend = SimulatedBackend(model)
    irqs = IrqRecorder(backend)
    yield clock, model, backend, irqs, Regs(backend)
    irqs.close()
    backend.close()


def test_counter_moves_at_one_hz(rtc):
    clock, _, _, _, regs = rtc
    assert regs[Reg.DR] == 1_700_000_000
    assert regs[Reg.CR] == 1
    clock.advance(0.999)
    assert regs[Reg.DR] == 1_700_000_000
    clock.advance(0.002)
    assert regs[Reg.DR] == 1_700_000_001
    clock.advance(3600)
    assert regs[Reg.DR] == 1_700_003_601


def test_load_register_sets_time(rtc):
    clock, _, _, _, regs = rtc
    clock.advance(0.5)
    regs[Reg.LR] = 42
    assert regs[Reg.DR] == 42
    assert regs[Reg.LR] == 42
    clock.advance(1.0)
    assert regs[Reg.DR] == 43
    regs[Reg.CR] = 0                    # cannot stop a started counter
    clock.advance(1.0)
    assert regs[Reg.DR] == 44


def test_match_interrupt(rtc):
    clock, _, backend, irqs, regs = rtc
    regs[Reg.LR] = 100
    regs[Reg.MR] = 103                  # pl031_set_alarm
    regs[Reg.IMSC] = 1
    clock.advance(2.5)
    assert regs[Reg.RIS] == 0
    assert irqs.take() == []
    clock.advance(0.5)
    assert regs[Reg.RIS] == 1
    assert regs[Reg.MIS] == 1
    assert irqs.take() == [0]
    regs[Reg.ICR] = 1                   # pl031_interrupt
    assert regs[Reg.RIS] == 0
    assert not backend.line(0)
    backend.unmask_irq(0)
    clock.advance(10)
    assert irqs.take() == []


def test_masked_match_sets_raw_status_only(rtc):
    clock, _, backend, irqs, regs = rtc
    regs[Reg.LR] = 0
    regs[Reg.MR] = 1
    clock.advance(1)
    assert regs[Reg.RIS] == 1 and regs[Reg.MIS] == 0
    assert irqs.take() == []
    regs[Reg.IMSC] = 1                  # unmasking a pending match raises the line
    assert irqs.take() == [0]
    assert backend.line(0)


def test_host_side_set_time_and_stopped_counter():
    clock = ManualClock()
    model = Pl031(clock, initial=5, running=False)
    backend = SimulatedBackend(model)
    regs = Regs(backend)
    assert regs[Reg.CR] == 0
    clock.advance(3)
    assert regs[Reg.DR] == 5
    # a stopped RTC keeps its 1 Hz edge (the boundary that sees a mapped RTCCR start):
    # one timer, never a poll loop
    assert model.live_timers == 1
    regs[Reg.CR] = 1
    clock.advance(2)
    assert regs[Reg.DR] == 7
    model.set_time(1000)
    assert regs[Reg.DR] == 1000
    assert model.live_timers == 1       # one tick pending, never a poll loop
    backend.close()
