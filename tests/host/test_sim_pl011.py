"""PL011 model driven with the register sequences Linux's amba-pl011 uses (16-bit accesses)."""

from __future__ import annotations

import pytest
from sim_helpers import IrqRecorder, Regs

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.pl011 import Cr, Flag, Int, Pl011, Reg

UARTCLK = 24_000_000
LCRH_8N1_FIFO = 0x70  # WLEN 8 bits | FEN


@pytest.fixture
def uart():
    clock = ManualClock()
    model = Pl011(clock, uartclk=UARTCLK)
    backend = SimulatedBackend(model)
    irqs = IrqRecorder(backend)
    yield clock, model, backend, irqs, Regs(backend, width=2)
    irqs.close()
    backend.close()


def linux_startup(regs: Regs, *, ifls: int = 0x12, fifo: bool = True) -> None:
    """What pl011_startup/pl011_set_termios do for 115200 8N1."""
    regs[Reg.IMSC] = 0
    regs[Reg.ICR] = 0x7FF
    regs[Reg.IFLS] = ifls
    regs[Reg.IBRD] = 13       # 24 MHz / (16 * 115200) = 13.02
    regs[Reg.FBRD] = 1
    regs[Reg.LCR_H] = LCRH_8N1_FIFO if fifo else 0x60
    regs[Reg.CR] = Cr.UARTEN | Cr.TXE | Cr.RXE


def test_reset_values_and_ids(uart):
    _, model, _, _, regs = uart
    assert regs[Reg.FR] == Flag.TXFE | Flag.RXFE
    assert regs[Reg.CR] == 0x300
    assert regs[Reg.IFLS] == 0x12
    ids = [regs[0xFE0 + 4 * i] for i in range(8)]
    assert ids == [0x11, 0x10, 0x34, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
    assert model.depth == 32


def test_tx_interrupt_on_drain_through_trigger_level(uart):
    clock, model, _, irqs, regs = uart
    linux_startup(regs)                  # TX trigger 1/2 of 32 = 16 entries
    payload = bytes(range(0x41, 0x41 + 20))
    for byte in payload:
        regs[Reg.DR] = byte
    fr = regs[Reg.FR]
    assert fr & Flag.BUSY and not fr & Flag.TXFE
    regs[Reg.IMSC] = Int.TX              # pl011_start_tx: unmask after priming the FIFO
    assert irqs.take() == []
    char = model.char_time()
    clock.advance(char * 3.5)            # 3 sent, 1 shifting: FIFO 20 -> 16
    assert regs[Reg.RIS] & Int.TX
    assert regs[Reg.MIS] == Int.TX
    assert irqs.take() == [0]
    assert model.tx_output == payload[:3]
    # The handler refills above the level: the write itself clears TXRIS.
    for byte in b"0123456789":
        regs[Reg.DR] = byte
    assert not regs[Reg.RIS] & Int.TX
    irqs.backend.unmask_irq(0)
    assert irqs.take() == []
    clock.advance(char * 40)
    assert model.take_tx() == payload + b"0123456789"
    assert regs[Reg.FR] & Flag.TXFE and not regs[Reg.FR] & Flag.BUSY
    # Clear with ICR, as pl011_int does before handling.
    assert regs[Reg.MIS] == Int.TX
    regs[Reg.ICR] = Int.TX
    assert regs[Reg.MIS] == 0
    assert not irqs.backend.line(0)


def test_tx_output_callback_and_baud_timing(uart):
    clock, model, _, _, regs = uart
    seen: list[bytes] = []
    model.on_tx = seen.append
    linux_startup(regs)
    regs[Reg.DR] = ord("x")
    clock.advance(model.char_time() * 0.9)
    assert seen == []                    # a character takes 10 bit times at 115200 baud
    clock.advance(model.char_time() * 0.2)
    assert seen == [b"x"]
    assert model.char_time() == pytest.approx(10 * 16 * (13 + 1 / 64) / UARTCLK)


def test_rx_trigger_then_receive_timeout(uart):
    clock, model, backend, irqs, regs = uart
    linux_startup(regs)                  # RX trigger 1/2 of 32 = 16
    regs[Reg.IMSC] = Int.RX | Int.RT
    model.inject_rx(bytes(range(20)))
    assert regs[Reg.RIS] & Int.RX
    assert irqs.take() == [0]
    got = []
    while regs[Reg.MIS] & Int.RX:        # pl011_fifo_to_tty: read while RXFE clear
        got.append(regs[Reg.DR] & 0xFF)
    assert got == list(range(5))         # 20 -> 15 entries: below the trigger level
    assert not regs[Reg.FR] & Flag.RXFE
    backend.unmask_irq(0)
    assert irqs.take() == []
    clock.advance(32 * 16 * (13 + 1 / 64) / UARTCLK * 1.01)
    assert regs[Reg.MIS] == Int.RT       # 15 characters waited 32 bit periods
    assert irqs.take() == [0]
    while not regs[Reg.FR] & Flag.RXFE:
        got.append(regs[Reg.DR] & 0xFF)
    assert got == list(range(20))
    assert regs[Reg.RIS] == 0            # emptying the FIFO clears RT
    assert not backend.line(0)


def test_upper_half_access_does_not_pop_the_fifo(uart):
    _, model, _, _, regs = uart
    linux_startup(regs)
    model.inject_rx(b"ab")
    assert regs.backend.read(0, Reg.DR + 2, 2) == 0
    assert regs.backend.read(0, Reg.DR + 1, 1) == 0
    assert regs[Reg.DR] == ord("a")
    assert regs.backend.read(0, Reg.DR, 4) == ord("b")


def test_overrun_break_and_error_clear(uart):
    _, model, _, _, regs = uart
    linux_startup(regs)
    model.inject_rx(bytes(33))
    assert regs[Reg.FR] & Flag.RXFF
    assert regs[Reg.RSR_ECR] & 0x8
    assert regs[Reg.RIS] & Int.OE
    regs[Reg.RSR_ECR] = 0
    assert regs[Reg.RSR_ECR] == 0
    for _ in range(32):
        regs[Reg.DR]
    model.inject_break()
    entry = regs[Reg.DR]
    assert entry & 0x400 and entry & 0x800          # break, and the overrun it follows
    assert regs[Reg.RSR_ECR] & 0x4
    assert regs[Reg.RIS] & Int.BE


def test_disabled_receiver_and_transmitter(uart):
    clock, model, _, _, regs = uart
    model.inject_rx(b"lost")                         # UARTEN clear after reset
    assert regs[Reg.FR] & Flag.RXFE
    regs[Reg.LCR_H] = LCRH_8N1_FIFO
    regs[Reg.DR] = ord("q")                          # queued, but TX disabled
    clock.advance(0.01)
    assert model.tx_output == b""
    regs[Reg.CR] = Cr.UARTEN | Cr.TXE
    clock.advance(0.01)
    assert model.tx_output == b"q"


def test_character_mode_holding_registers(uart):
    clock, model, _, irqs, regs = uart
    linux_startup(regs, fifo=False)
    regs[Reg.IMSC] = Int.TX | Int.RX
    regs[Reg.DR] = ord("1")
    assert not regs[Reg.FR] & Flag.TXFF              # moved straight to the shifter
    regs[Reg.DR] = ord("2")
    assert regs[Reg.FR] & Flag.TXFF                  # the 1-byte holding register is full
    regs[Reg.DR] = ord("3")                          # lost
    clock.advance(0.01)
    assert model.tx_output == b"12"
    model.inject_rx(b"xy")
    assert regs[Reg.FR] & Flag.RXFF
    assert regs[Reg.RIS] & Int.OE
    assert regs[Reg.DR] & 0xFF == ord("x")
    assert irqs.take() == [0]


def test_loopback_and_fifo_enable_flushes(uart):
    clock, model, _, _, regs = uart
    linux_startup(regs)
    regs[Reg.CR] = Cr.UARTEN | Cr.TXE | Cr.RXE | Cr.LBE
    for byte in b"loop":
        regs[Reg.DR] = byte
    clock.advance(0.01)
    assert model.tx_output == b""
    assert [regs[Reg.DR] & 0xFF for _ in range(4)] == list(b"loop")
    model.inject_rx(b"stale")
    regs[Reg.LCR_H] = 0x60                           # FEN off: both FIFOs flushed
    assert regs[Reg.FR] & Flag.RXFE


def test_dmacr_is_plain_storage_in_the_model(uart):
    """The model keeps UARTDMACR (nothing is wired to it); the driver traps it."""
    _, _, _, _, regs = uart
    regs[Reg.DMACR] = 0x3
    assert regs[Reg.DMACR] == 0x3
