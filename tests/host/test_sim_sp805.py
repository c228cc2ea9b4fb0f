"""SP805 model driven the way Linux's sp805_wdt does: unlock, load, enable, ping, lock."""

from __future__ import annotations

import pytest
from sim_helpers import IrqRecorder, Regs

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.sp805 import UNLOCK_KEY, Control, Reg, Sp805

RATE = 1_000_000


@pytest.fixture
def wdt():
    clock = ManualClock()
    model = Sp805(clock, rate=RATE)
    backend = SimulatedBackend(model)
    irqs = IrqRecorder(backend)
    yield clock, model, backend, irqs, Regs(backend)
    irqs.close()
    backend.close()


def start(regs: Regs, load: int, control: int = Control.INTEN | Control.RESEN) -> None:
    """wdt_setload + wdt_config(ping=False) as sp805_wdt does them."""
    regs[Reg.LOCK] = UNLOCK_KEY
    regs[Reg.LOAD] = load
    regs[Reg.INTCLR] = 0
    regs[Reg.CONTROL] = control
    regs[Reg.LOCK] = 0


def test_reset_values_and_ids(wdt):
    _, model, _, _, regs = wdt
    assert regs[Reg.LOAD] == 0xFFFFFFFF
    assert regs[Reg.VALUE] == 0xFFFFFFFF
    assert regs[Reg.LOCK] == 0
    assert [regs[0xFE0 + 4 * i] for i in range(4)] == [0x05, 0x18, 0x14, 0x00]
    assert model.live_timers == 0                # stopped: nothing scheduled


def test_countdown_interrupt_then_reset_output(wdt):
    clock, model, _backend, irqs, regs = wdt
    resets: list[bool] = []
    model.on_reset = resets.append
    start(regs, 1000)
    assert regs[Reg.LOCK] == 1
    clock.advance(0.0004)
    assert regs[Reg.VALUE] == 600
    assert model.live_timers == 1                # one timer: the moment it hits zero
    clock.advance(0.0006)
    assert regs[Reg.RIS] == 1 and regs[Reg.MIS] == 1
    assert irqs.take() == [0]
    assert regs[Reg.VALUE] == 1000               # reloaded
    assert not model.reset_asserted
    clock.advance(0.000999)                      # a period is LOAD + 1 cycles
    assert not model.reset_asserted and regs[Reg.VALUE] == 2
    clock.advance(0.0000025)                     # second timeout, interrupt uncleared
    assert model.reset_asserted and model.resets == 1
    assert resets == [True]


def test_ping_reloads_and_prevents_reset(wdt):
    clock, model, _, _, regs = wdt
    start(regs, 1000)
    for _ in range(10):
        clock.advance(0.0009)
        regs[Reg.LOCK] = UNLOCK_KEY              # wdt_ping
        regs[Reg.INTCLR] = 0
        regs[Reg.LOCK] = 0
    assert regs[Reg.RIS] == 0
    assert model.resets == 0


def test_lock_ignores_writes(wdt):
    _clock, model, _, _, regs = wdt
    regs[Reg.LOCK] = 0x1234                      # any other value locks
    assert regs[Reg.LOCK] == 1
    regs[Reg.LOAD] = 10
    regs[Reg.CONTROL] = Control.INTEN
    assert regs[Reg.LOAD] == 0xFFFFFFFF and regs[Reg.CONTROL] == 0
    regs[Reg.LOCK] = UNLOCK_KEY
    assert regs[Reg.LOCK] == 0
    regs.backend.write(0, Reg.LOCK, 2, UNLOCK_KEY & 0xFFFF)   # half a key locks
    assert regs[Reg.LOCK] == 1
    assert not model.running


def test_resen_masks_the_reset_output_and_disable_stops(wdt):
    clock, model, _, _, regs = wdt
    start(regs, 100, Control.INTEN)
    clock.advance(0.001)
    assert regs[Reg.RIS] == 1 and not model.reset_asserted
    regs[Reg.LOCK] = UNLOCK_KEY
    regs[Reg.CONTROL] = 0                        # wdt_disable
    held = regs[Reg.VALUE]
    clock.advance(1)
    assert regs[Reg.VALUE] == held
    assert model.live_timers == 0
    assert regs[Reg.MIS] == 0


def test_integration_test_mode_drives_outputs(wdt):
    _, model, backend, _, regs = wdt
    regs[Reg.ITCR] = 1
    regs[Reg.ITOP] = 0x2                         # WDOGINT
    assert backend.line(0)
    regs[Reg.ITOP] = 0x1                         # WDOGRES
    assert model.reset_asserted and not backend.line(0)
    regs[Reg.ITCR] = 0
    assert not model.reset_asserted
