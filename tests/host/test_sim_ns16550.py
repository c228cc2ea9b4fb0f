"""16550A model driven the way Linux's 8250 core does (reg-shift 2, reg-io-width 4)."""

from __future__ import annotations

import pytest
from sim_helpers import IrqRecorder, Regs

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.ns16550 import Ier, Iir, Lsr, Mcr, Msr, Ns16550

CLOCK = 24_000_000
SHIFT = 2
RBR = THR = DLL = 0 << SHIFT
IER = DLM = 1 << SHIFT
IIR = FCR = 2 << SHIFT
LCR = 3 << SHIFT
MCR = 4 << SHIFT
LSR = 5 << SHIFT
MSR = 6 << SHIFT
SCR = 7 << SHIFT


@pytest.fixture
def uart():
    clock = ManualClock()
    model = Ns16550(clock, reg_shift=SHIFT, reg_io_width=4, clock_rate=CLOCK)
    backend = SimulatedBackend(model, 0x1000)
    irqs = IrqRecorder(backend)
    yield clock, model, backend, irqs, Regs(backend, width=4)
    irqs.close()
    backend.close()


def startup(regs: Regs) -> None:
    """serial8250_do_startup + set_termios for 115200 8N1 with FIFOs (trigger 8)."""
    regs[FCR] = 0x07                     # clear FIFOs
    regs[FCR] = 0x00
    regs[LSR], regs[RBR], regs[IIR], regs[MSR]   # clear pending state
    regs[LCR] = 0x80                     # DLAB
    regs[DLL] = 13                       # 24 MHz / (16 * 115200)
    regs[DLM] = 0
    regs[LCR] = 0x03                     # 8N1
    regs[FCR] = 0x81                     # FIFO on, RX trigger 8
    regs[MCR] = Mcr.DTR | Mcr.RTS | Mcr.OUT2


def test_reset_state(uart):
    _, _, _, _, regs = uart
    assert regs[IIR] == 0x01
    assert regs[LSR] == Lsr.THRE | Lsr.TEMT
    assert regs[LCR] == 0 and regs[IER] == 0


def test_divisor_latch_and_scratch(uart):
    _, model, _, _, regs = uart
    startup(regs)
    assert model.divisor == 13
    regs[LCR] = 0x83
    assert regs[DLL] == 13 and regs[DLM] == 0
    regs[LCR] = 0x03
    regs[SCR] = 0x5A
    assert regs[SCR] == 0x5A


def test_thre_interrupt_on_enable_and_on_drain(uart):
    clock, model, backend, irqs, regs = uart
    startup(regs)
    regs[IER] = Ier.ETBEI                # THR empty: enabling ETBEI raises THRE
    assert regs[IIR] == 0xC0 | Iir.THRE
    assert irqs.take() == [0]
    assert regs[IIR] == 0xC1             # reading IIR while THRE was reported cleared it
    backend.unmask_irq(0)
    for byte in b"hello":
        regs[THR] = byte
    assert not regs[LSR] & Lsr.TEMT
    clock.advance(model.char_time() * 1.5)
    assert regs[IIR] == 0xC1             # 4 still queued
    clock.advance(model.char_time() * 3)
    assert regs[LSR] & Lsr.THRE and not regs[LSR] & Lsr.TEMT
    assert irqs.take() == [0]
    assert regs[IIR] == 0xC0 | Iir.THRE
    clock.advance(model.char_time())
    assert model.take_tx() == b"hello"
    assert regs[LSR] & Lsr.TEMT


def test_rx_data_available_and_timeout(uart):
    clock, model, backend, irqs, regs = uart
    startup(regs)
    regs[IER] = Ier.ERBFI
    model.inject_rx(b"1234567")
    assert regs[IIR] == 0xC1             # 7 < trigger 8
    model.inject_rx(b"8")
    assert regs[IIR] == 0xC0 | Iir.RX_DATA
    assert irqs.take() == [0]
    got = bytes(regs[RBR] for _ in range(2))
    assert regs[IIR] == 0xC1
    backend.unmask_irq(0)
    clock.advance(model.char_time() * 4.1)
    assert regs[IIR] == 0xC0 | Iir.RX_TIMEOUT
    assert irqs.take() == [0]
    while regs[LSR] & Lsr.DR:
        got += bytes((regs[RBR],))
    assert got == b"12345678"
    assert regs[IIR] == 0xC1


def test_priorities_line_status_over_data_over_thre(uart):
    _, model, _, _, regs = uart
    startup(regs)
    regs[IER] = Ier.ERBFI | Ier.ETBEI | Ier.ELSI | Ier.EDSSI
    model.inject_rx(bytes(17))           # one more than the FIFO holds: overrun
    assert regs[IIR] & 0xF == Iir.LINE_STATUS
    assert regs[LSR] & Lsr.OE            # reading LSR clears the error
    assert regs[IIR] & 0xF == Iir.RX_DATA
    for _ in range(16):
        regs[RBR]
    assert regs[IIR] & 0xF == Iir.THRE
    regs[IIR]
    model.set_modem_inputs(cts=True)
    assert regs[IIR] & 0xF == Iir.MODEM_STATUS
    assert regs[MSR] == Msr.CTS | Msr.DCTS
    assert regs[MSR] == Msr.CTS
    assert regs[IIR] == 0xC1


def test_break_sets_bi(uart):
    _, model, _, _, regs = uart
    startup(regs)
    model.inject_break()
    lsr = regs[LSR]
    assert lsr & Lsr.BI and lsr & Lsr.DR and lsr & Lsr.FIFO_ERROR
    assert regs[RBR] == 0
    assert not regs[LSR] & Lsr.BI


def test_loopback(uart):
    clock, model, _, _, regs = uart
    startup(regs)
    regs[MCR] = Mcr.LOOP | Mcr.RTS
    assert regs[MSR] & Msr.CTS           # RTS loops to CTS
    regs[THR] = 0x55
    model.inject_rx(b"X")                # SIN is cut off in loopback
    clock.advance(model.char_time() * 1.1)
    assert model.tx_output == b""
    assert regs[RBR] == 0x55
    assert not regs[LSR] & Lsr.DR


def test_fcr_clears_and_non_fifo_mode(uart):
    _clock, model, _, _, regs = uart
    startup(regs)
    model.inject_rx(b"abc")
    regs[FCR] = 0x83                     # clear RX
    assert not regs[LSR] & Lsr.DR
    regs[FCR] = 0x00                     # FIFOs off: 1-byte holding register
    assert regs[IIR] == 0x01
    model.inject_rx(b"xy")
    assert regs[LSR] & Lsr.OE
    assert regs[RBR] == ord("x")


def test_byte_spaced_variant():
    model = Ns16550(ManualClock(), reg_shift=0, reg_io_width=1)
    backend = SimulatedBackend(model, 8)
    backend.write(0, 7, 1, 0xA5)
    assert backend.read(0, 7, 1) == 0xA5
    assert backend.read(0, 5, 1) == Lsr.THRE | Lsr.TEMT
    assert backend.read(0, 4, 4) == 0xA5_00_60_00      # SCR, MSR, LSR, MCR in one word
    backend.close()
    with pytest.raises(ValueError):
        Ns16550(ManualClock(), reg_shift=0, reg_io_width=4)
