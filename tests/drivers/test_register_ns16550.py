"""The 16550 driver: layout from the node, nothing trapped, reset drains and silences."""

from __future__ import annotations

import pytest
from register_bench import SOC, DeadBus, open_bench

from platpass.drivers.ns16550 import Ns16550, Reg
from platpass.errors import DriverError
from platpass.firmware.model import DeviceNode

LSR_THRE_TEMT = 0x60


@pytest.fixture
def bench():
    b = open_bench(f"{SOC}/serial@50000")
    yield b
    b.close()


def test_layout_from_the_node(bench):
    driver = bench.driver
    assert isinstance(driver, Ns16550)
    assert (driver.reg_shift, driver.io_width) == (2, 4)
    assert driver.offset(Reg.LSR) == 0x14
    assert driver.active_traps() == ()           # FCR bit 3 is harmless (module docstring)


@pytest.mark.parametrize(("shift", "width"), [(0, 4), (1, 4), (5, 1), (2, 3)])
def test_impossible_layouts_are_refused(shift, width):
    node = DeviceNode("/serial", ("ns16550a",), "okay", True, properties={
        "reg-shift": shift.to_bytes(4, "big"), "reg-io-width": width.to_bytes(4, "big")})
    with pytest.raises(DriverError):
        Ns16550(node)


def test_reset_drains_and_silences(bench):
    regs = bench.backend
    model = regs.model
    off = bench.driver.offset
    regs.write(0, off(Reg.LCR), 4, 0x03)
    regs.write(0, off(Reg.IIR_FCR), 4, 0xC1)     # FIFO on, trigger 14
    regs.write(0, off(Reg.IER), 4, 0x0F)
    regs.write(0, off(Reg.MCR), 4, 0x0B)
    regs.write(0, off(Reg.SCR), 4, 0x77)
    model.inject_rx(b"the last guest's secret input")
    for byte in b"queued":
        regs.write(0, off(Reg.RBR_THR), 4, byte)
    regs.write(0, off(Reg.LCR), 4, 0x83)          # and leave DLAB set
    assert regs.line(0)
    bench.driver.reset(regs)
    assert not model.rx_fifo and not model.tx_fifo
    assert regs.read(0, off(Reg.IER), 4) == 0
    assert regs.read(0, off(Reg.IIR_FCR), 4) == 0x01
    assert regs.read(0, off(Reg.LSR), 4) & ~0x40 == 0x20   # THRE; TEMT once shifted out
    assert regs.read(0, off(Reg.LCR), 4) == 0
    assert regs.read(0, off(Reg.MCR), 4) == 0
    assert regs.read(0, off(Reg.SCR), 4) == 0
    assert not regs.line(0)
    bench.clock.advance(1.0)
    assert model.tx_output in (b"q", b"")        # at most the character already on the wire
    assert regs.read(0, off(Reg.LSR), 4) == LSR_THRE_TEMT


def test_reset_is_bounded_on_a_dead_bus(bench):
    bus = DeadBus(value=0xFFFFFFFF)               # LSR.DR stuck at 1
    bench.driver.reset(bus)
    assert bus.reads <= 2 * 128 + 8
    assert all(offset % 4 == 0 for offset, _ in bus.writes)
