"""PL061 model driven the way Linux's gpio-pl061 does: masked DATA, DIR, IS/IBE/IEV/IE/IC."""

from __future__ import annotations

import pytest
from sim_helpers import IrqRecorder, Regs

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.pl061 import Pl061, Reg


@pytest.fixture
def gpio():
    model = Pl061(ManualClock())
    backend = SimulatedBackend(model)
    irqs = IrqRecorder(backend)
    yield model, backend, irqs, Regs(backend, width=1)
    irqs.close()
    backend.close()


def data_address(pins: int) -> int:
    """gpio-pl061 reaches pin set ``pins`` at ``base + (pins << 2)``."""
    return pins << 2


def test_ids_and_reset(gpio):
    _, _, _, regs = gpio
    assert [regs[0xFE0 + 4 * i] for i in range(4)] == [0x61, 0x10, 0x14, 0x00]
    assert regs[Reg.DIR] == 0 and regs[Reg.RIS] == 0


def test_masked_data_addressing(gpio):
    model, _, _, regs = gpio
    outputs: list[int] = []
    model.on_output = outputs.append
    regs[Reg.DIR] = 0x0F                         # pl061_direction_output on pins 0-3
    regs[data_address(0xFF)] = 0x05
    assert model.pins == 0x05
    regs[data_address(0x02)] = 0xFF              # touches only pin 1
    assert model.pins == 0x07
    regs[data_address(0x01)] = 0x00              # only pin 0
    assert model.pins == 0x06
    assert regs[data_address(0x04)] == 0x04      # read masks too
    assert regs[data_address(0x01)] == 0x00
    model.drive(7, True)                         # input pin 7 from the host side
    assert regs[data_address(0x80)] == 0x80
    assert regs[data_address(0xFF)] == 0x86
    regs[data_address(0x80)] = 0x00              # writing an input pin changes no pad
    assert model.pins & 0x80
    assert outputs == [0x05, 0x07, 0x06]


def test_rising_edge_interrupt_latches_until_cleared(gpio):
    model, backend, irqs, regs = gpio
    regs[Reg.IS] = 0x00
    regs[Reg.IBE] = 0x00
    regs[Reg.IEV] = 0x01                         # pin 0: rising edge
    regs[Reg.IE] = 0x01
    model.drive(0, False)
    assert irqs.take() == []
    model.drive(0, True)
    assert regs[Reg.RIS] == 0x01 and regs[Reg.MIS] == 0x01
    assert irqs.take() == [0]
    model.drive(0, False)                        # the falling edge is not a source
    regs[Reg.IC] = 0x01
    assert regs[Reg.RIS] == 0
    assert not backend.line(0)
    backend.unmask_irq(0)
    assert irqs.take() == []


def test_falling_and_both_edges(gpio):
    model, _, _, regs = gpio
    model.drive_all(0xFF)
    regs[Reg.IEV] = 0x00                         # pin 1 falling
    regs[Reg.IBE] = 0x04                         # pin 2 both edges
    model.drive(1, False)
    model.drive(2, False)
    assert regs[Reg.RIS] == 0x06
    regs[Reg.IC] = 0x06
    model.drive(1, True)                         # rising on a falling-edge pin: nothing
    model.drive(2, True)                         # both-edge pin: again
    assert regs[Reg.RIS] == 0x04


def test_level_interrupt_follows_the_pin_and_ignores_clear(gpio):
    model, backend, irqs, regs = gpio
    regs[Reg.IS] = 0x08                          # pin 3 level
    regs[Reg.IEV] = 0x08                         # high
    regs[Reg.IE] = 0x08
    model.drive(3, True)
    assert irqs.take() == [0]
    regs[Reg.IC] = 0x08                          # a level source cannot be cleared
    assert regs[Reg.MIS] == 0x08
    backend.unmask_irq(0)
    assert irqs.take() == [0]                    # still asserted at unmask: fires again
    model.drive(3, False)
    assert regs[Reg.RIS] == 0
    backend.unmask_irq(0)
    assert irqs.take() == []


def test_edges_latch_while_disabled_and_show_when_enabled(gpio):
    model, _, irqs, regs = gpio
    regs[Reg.IEV] = 0x10
    model.drive(4, True)
    assert regs[Reg.RIS] == 0x10 and regs[Reg.MIS] == 0
    assert irqs.take() == []
    regs[Reg.IE] = 0x10
    assert irqs.take() == [0]


def test_output_pin_edges_are_seen(gpio):
    _, _, _, regs = gpio
    regs[Reg.IEV] = 0x01
    regs[Reg.DIR] = 0x01
    regs[data_address(0x01)] = 0x01
    assert regs[Reg.RIS] == 0x01


def test_afsel_is_storage_and_pins_are_validated(gpio):
    model, _, _, regs = gpio
    regs[Reg.AFSEL] = 0xA5
    assert regs[Reg.AFSEL] == 0xA5
    with pytest.raises(ValueError):
        model.drive(8, True)
