"""A 16550A-compatible UART, after the National Semiconductor PC16550D datasheet.

Eight byte registers ``reg-shift`` apart, reached with ``reg-io-width``-byte accesses (the
``ns16550a`` binding; ``reg-shift = <2>, reg-io-width = <4>`` is the common SoC layout).
What is modelled: RBR/THR and the divisor latch behind ``LCR.DLAB``; 16-byte FIFOs enabled
by ``FCR`` (bit 0; bits 1/2 clear them; bits 7:6 the RX trigger of 1/4/8/14 bytes), or
1-byte holding registers; a transmitter shifting one character per character time computed
from the input clock, the divisor and ``LCR``; ``LSR`` (DR, OE, BI, THRE, TEMT, FIFO error)
with errors cleared by reading it; ``MSR`` with delta bits cleared by reading it;
loopback (``MCR.LOOP``: TX feeds RX, ``MCR`` outputs feed the ``MSR`` inputs); ``SCR``.

Interrupts follow the datasheet's priorities, reported by ``IIR`` (bits 7:6 set while the
FIFOs are on): receiver line status (0x6) > received data available (0x4, FIFO at the
trigger level) = character timeout (0xC, data waiting for 4 character times) > THR empty
(0x2, cleared by reading ``IIR`` while it is the one reported, or by writing ``THR``;
enabling ``ETBEI`` while THR is empty raises it) > modem status (0x0). The output is the
plain INTR pin: SoC integrations wire it straight to the interrupt controller, so
``MCR.OUT2`` (the PC's IRQ gate) gates nothing here. ``FCR`` bit 3 (DMA mode) only changes
the TXRDY/RXRDY handshake pins, which this model, like a node without ``dmas``, leaves
unconnected.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from platpass.host.simulated.clock import ModelClock
from platpass.host.simulated.models.uart_common import UartModel


class Reg(IntEnum):
    """Register *indexes* (the offset is ``index << reg_shift``)."""

    RBR_THR_DLL = 0
    IER_DLM = 1
    IIR_FCR = 2
    LCR = 3
    MCR = 4
    LSR = 5
    MSR = 6
    SCR = 7


class Ier(IntFlag):
    """``IER`` bits."""

    ERBFI = 1 << 0
    ETBEI = 1 << 1
    ELSI = 1 << 2
    EDSSI = 1 << 3


class Iir(IntEnum):
    """``IIR`` interrupt identifications (bits 3:0)."""

    MODEM_STATUS = 0x0
    NONE = 0x1
    THRE = 0x2
    RX_DATA = 0x4
    LINE_STATUS = 0x6
    RX_TIMEOUT = 0xC


class Fcr(IntFlag):
    """``FCR`` bits (bits 7:6 are the RX trigger)."""

    ENABLE = 1 << 0
    CLEAR_RX = 1 << 1
    CLEAR_TX = 1 << 2
    DMA_MODE = 1 << 3


class Lsr(IntFlag):
    """``LSR`` bits."""

    DR = 1 << 0
    OE = 1 << 1
    PE = 1 << 2
    FE = 1 << 3
    BI = 1 << 4
    THRE = 1 << 5
    TEMT = 1 << 6
    FIFO_ERROR = 1 << 7


class Mcr(IntFlag):
    """``MCR`` bits."""

    DTR = 1 << 0
    RTS = 1 << 1
    OUT1 = 1 << 2
    OUT2 = 1 << 3
    LOOP = 1 << 4


class Msr(IntFlag):
    """``MSR`` bits: deltas in 3:0, line states in 7:4."""

    DCTS = 1 << 0
    DDSR = 1 << 1
    TERI = 1 << 2
    DDCD = 1 << 3
    CTS = 1 << 4
    DSR = 1 << 5
    RI = 1 << 6
    DCD = 1 << 7


FIFO_DEPTH = 16
RX_TRIGGERS = (1, 4, 8, 14)
LCR_DLAB = 0x80
_ERRORS = int(Lsr.OE | Lsr.PE | Lsr.FE | Lsr.BI)
# Plain ints for the hot paths (IntFlag arithmetic is slow).
_ERBFI, _ETBEI, _ELSI, _EDSSI = (int(b) for b in Ier)
_IIR_THRE = int(Iir.THRE)
_LSR_DR, _LSR_OE, _LSR_BI, _LSR_THRE, _LSR_TEMT, _LSR_FIFO_ERROR = (
    int(b) for b in (Lsr.DR, Lsr.OE, Lsr.BI, Lsr.THRE, Lsr.TEMT, Lsr.FIFO_ERROR))
_LOOP = int(Mcr.LOOP)
DEFAULT_CLOCK = 1_843_200
DEFAULT_BAUD = 115_200


class Ns16550(UartModel):
    """The 16550A model. Host side as for the PL011: :attr:`tx_output`, :attr:`on_tx`,
    :meth:`take_tx`, :meth:`inject_rx`, :meth:`inject_break`; plus
    :meth:`set_modem_inputs` for CTS/DSR/RI/DCD."""

    kind = "ns16550"
    depth = FIFO_DEPTH
    break_errors = Lsr.BI

    def __init__(self, clock: ModelClock, *, reg_shift: int = 0, reg_io_width: int = 1,
                 clock_rate: int | None = None) -> None:
        if reg_io_width not in (1, 2, 4) or not 0 <= reg_shift <= 4:
            raise ValueError(f"unsupported reg-shift {reg_shift} / reg-io-width {reg_io_width}")
        stride = 1 << reg_shift
        if reg_io_width > stride:
            raise ValueError(f"reg-io-width {reg_io_width} wider than the register stride "
                             f"{stride} (reg-shift {reg_shift})")
        self.reg_width = reg_io_width
        self.size = 8 * stride
        self.stride = stride
        self.side_effect_ranges = ((0, 7 * stride),)    # everything but SCR
        self.storage_offsets = frozenset({Reg.SCR * stride})
        super().__init__(clock)
        self.clock_rate = clock_rate or DEFAULT_CLOCK
        self._offsets = tuple(index * stride for index in range(8))
        self._build_tables()
        self._modem_inputs = 0
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """Master-reset values from the datasheet: IER/FCR/LCR/MCR 0, LSR 0x60, IIR 0x01."""
        self._reset_fifos()    # rx_fifo entries: byte | (LSR error bits << 8)
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.dll = 0
        self.dlm = 0
        self.fifo_enabled = False
        self.rx_trigger = 1
        self.dma_mode = False
        self._lsr_errors = 0
        self._thre_pending = False
        self._timeout_pending = False
        self._msr_deltas = 0
        self._msr_lines = self._modem_lines()
        self._update_line()

    # -- host side ------------------------------------------------------------------------

    # inject_rx / inject_break / take_tx come from UartModel; SIN is cut off in loopback.

    def _rx_pin_connected(self) -> bool:
        return not self.mcr & _LOOP

    def _loopback(self) -> bool:
        return bool(self.mcr & _LOOP)

    def set_modem_inputs(self, *, cts: bool = False, dsr: bool = False, ri: bool = False,
                         dcd: bool = False) -> None:
        """Drive the modem-status input pins (the levels ``MSR`` shows outside loopback)."""
        lines = ((Msr.CTS if cts else 0) | (Msr.DSR if dsr else 0) | (Msr.RI if ri else 0)
                 | (Msr.DCD if dcd else 0))
        def apply() -> None:
            self._modem_inputs = lines
            self._refresh_modem()
        self.run_step(apply)

    # -- derived state ------------------------------------------------------------------------

    @property
    def divisor(self) -> int:
        return (self.dlm << 8) | self.dll

    def char_time(self) -> float:
        """Seconds per frame: start, 5-8 data bits, parity, 1 or 2 stop bits."""
        baud = self.clock_rate / (16 * self.divisor) if self.divisor else DEFAULT_BAUD
        bits: float = 1 + 5 + (self.lcr & 3) + (1 if self.lcr & 0x08 else 0)
        bits += (1.5 if (self.lcr & 3) == 0 else 2) if self.lcr & 0x04 else 1
        return bits / baud

    def lsr(self) -> int:
        value = self._lsr_errors
        if self.rx_fifo:
            value |= _LSR_DR
        if not self.tx_fifo:
            value |= _LSR_THRE
            if not self._shifting:
                value |= _LSR_TEMT
        if self.fifo_enabled and any(entry >> 8 for entry in self.rx_fifo):
            value |= _LSR_FIFO_ERROR
        return value

    def _rx_ready(self) -> bool:
        if self.fifo_enabled:
            return len(self.rx_fifo) >= self.rx_trigger
        return bool(self.rx_fifo)

    def interrupt_id(self) -> Iir:
        """The highest-priority pending and enabled interrupt."""
        if self.ier & _ELSI and self._lsr_errors & _ERRORS:
            return Iir.LINE_STATUS
        if self.ier & _ERBFI:
            if self._rx_ready():
                return Iir.RX_DATA
            if self._timeout_pending:
                return Iir.RX_TIMEOUT
        if self.ier & _ETBEI and self._thre_pending:
            return Iir.THRE
        if self.ier & _EDSSI and self._msr_deltas:
            return Iir.MODEM_STATUS
        return Iir.NONE

    def _iir(self) -> int:
        return self.interrupt_id() | (0xC0 if self.fifo_enabled else 0)

    def _update_line(self) -> None:
        self.set_line(0, self.interrupt_id() != Iir.NONE)

    # -- modem lines ----------------------------------------------------------------------------

    def _modem_lines(self) -> int:
        if self.mcr & _LOOP:
            lines = 0
            lines |= Msr.CTS if self.mcr & Mcr.RTS else 0
            lines |= Msr.DSR if self.mcr & Mcr.DTR else 0
            lines |= Msr.RI if self.mcr & Mcr.OUT1 else 0
            lines |= Msr.DCD if self.mcr & Mcr.OUT2 else 0
            return lines
        return self._modem_inputs

    def _refresh_modem(self) -> None:
        old, new = self._msr_lines, self._modem_lines()
        changed = old ^ new
        if changed & Msr.CTS:
            self._msr_deltas |= Msr.DCTS
        if changed & Msr.DSR:
            self._msr_deltas |= Msr.DDSR
        if old & Msr.RI and not new & Msr.RI:
            self._msr_deltas |= Msr.TERI
        if changed & Msr.DCD:
            self._msr_deltas |= Msr.DDCD
        self._msr_lines = new
        self._update_line()

    # -- transmitter ------------------------------------------------------------------------------

    def _write_thr(self, byte: int) -> None:
        self._thre_pending = False
        if len(self.tx_fifo) < self.capacity:
            self.tx_fifo.append(byte)
        self._kick_tx()

    def _kick_tx(self) -> None:
        if self._shifting or not self.tx_fifo:
            return
        byte = self.tx_fifo.popleft()
        if not self.tx_fifo:
            self._thre_pending = True      # THR (FIFO) just became empty
        self._start_shift(byte)

    # -- receiver ---------------------------------------------------------------------------------

    def _receive(self, byte: int, errors: int = 0) -> None:
        if len(self.rx_fifo) >= self.capacity:
            self._lsr_errors |= _LSR_OE       # the character in the shift register is lost
        else:
            if not self.rx_fifo:
                self._lsr_errors |= errors   # errors show when their character is on top
            self.rx_fifo.append((byte & 0xFF) | (errors << 8))
        self._timeout_pending = False
        self._restart_timeout()
        self._update_line()

    def _rx_timeout_delay(self) -> float:
        """Four character times (the 16550's character timeout)."""
        return 4 * self.char_time()

    def resume(self) -> None:
        """As every UART model, but the 16550 has a receive timeout in FIFO mode only."""
        super().resume()
        self._restart_timeout()

    def _restart_timeout(self) -> None:
        if self.fifo_enabled and self.rx_fifo:
            self._arm_rx_timeout(self._rx_timeout_delay())
        else:
            self._disarm_rx_timeout()

    def _rx_timed_out(self) -> None:
        self._timeout_pending = True

    def _read_rbr(self) -> int:
        if not self.rx_fifo:
            return 0
        entry = self.rx_fifo.popleft()
        if self.rx_fifo:
            self._lsr_errors |= self.rx_fifo[0] >> 8
        self._timeout_pending = False
        self._restart_timeout()
        return entry & 0xFF

    def _write_fcr(self, value: int) -> None:
        enable = bool(value & Fcr.ENABLE)
        if enable != self.fifo_enabled:
            self.rx_fifo.clear()
            self.tx_fifo.clear()
        self.fifo_enabled = enable
        if value & Fcr.CLEAR_RX:
            self.rx_fifo.clear()
        if value & Fcr.CLEAR_TX and self.tx_fifo:
            self.tx_fifo.clear()
            self._thre_pending = True
        if not self.rx_fifo:
            self._timeout_pending = False
            self._disarm_rx_timeout()
        self.rx_trigger = RX_TRIGGERS[(value >> 6) & 3]
        self.dma_mode = bool(value & Fcr.DMA_MODE)

    # -- registers -----------------------------------------------------------------------------

    def _build_tables(self) -> None:
        at = self._offsets
        self.peekers = {
            at[Reg.RBR_THR_DLL]: self._peek_rbr_dll,
            at[Reg.IER_DLM]: lambda: self.dlm if self.lcr & LCR_DLAB else self.ier,
            at[Reg.IIR_FCR]: self._iir,
            at[Reg.LCR]: lambda: self.lcr,
            at[Reg.MCR]: lambda: self.mcr,
            at[Reg.LSR]: self.lsr,
            at[Reg.MSR]: lambda: self._msr_lines | self._msr_deltas,
            at[Reg.SCR]: lambda: self.scr,
        }
        self.readers = {
            at[Reg.RBR_THR_DLL]: self._read_rbr_dll,
            at[Reg.IIR_FCR]: self._read_iir,
            at[Reg.LSR]: self._read_lsr,
            at[Reg.MSR]: self._read_msr,
        }
        self.writers = {
            at[Reg.RBR_THR_DLL]: self._write_thr_dll,
            at[Reg.IER_DLM]: self._write_ier_dlm,
            at[Reg.IIR_FCR]: lambda value, mask: self._write_fcr(value & 0xFF),
            at[Reg.LCR]: self._write_lcr,
            at[Reg.MCR]: self._write_mcr,
            at[Reg.SCR]: self._write_scr,
        }

    def read_reg(self, offset: int, mask: int) -> int:
        if not mask & 0xFF:
            return 0    # an access to the unused upper lanes of a 32-bit-wide register
        value = super().read_reg(offset, mask)
        if offset in self.readers:
            self._update_line()
        return value

    def write_reg(self, offset: int, value: int, mask: int) -> None:
        if mask & 0xFF:
            super().write_reg(offset, value, mask)

    def after_write(self) -> None:
        self._update_line()

    def _peek_rbr_dll(self) -> int:
        if self.lcr & LCR_DLAB:
            return self.dll
        return self.rx_fifo[0] & 0xFF if self.rx_fifo else 0

    def _read_rbr_dll(self, mask: int) -> int:
        return self.dll if self.lcr & LCR_DLAB else self._read_rbr()

    def _read_iir(self, mask: int) -> int:
        value = self._iir()
        if value & 0xF == _IIR_THRE:
            self._thre_pending = False
        return value

    def _read_lsr(self, mask: int) -> int:
        value = self.lsr()
        self._lsr_errors = 0
        return value

    def _read_msr(self, mask: int) -> int:
        value = self._msr_lines | self._msr_deltas
        self._msr_deltas = 0
        return value

    def _write_thr_dll(self, value: int, mask: int) -> None:
        if self.lcr & LCR_DLAB:
            self.dll = value & 0xFF
        else:
            self._write_thr(value & 0xFF)

    def _write_ier_dlm(self, value: int, mask: int) -> None:
        byte = value & 0xFF
        if self.lcr & LCR_DLAB:
            self.dlm = byte
            return
        enabling_thre = byte & _ETBEI and not self.ier & _ETBEI
        self.ier = byte & 0x0F
        if enabling_thre and not self.tx_fifo:
            self._thre_pending = True

    def _write_lcr(self, value: int, mask: int) -> None:
        self.lcr = value & 0xFF

    def _write_mcr(self, value: int, mask: int) -> None:
        self.mcr = value & 0x1F
        self._refresh_modem()

    def _write_scr(self, value: int, mask: int) -> None:
        self.scr = value & 0xFF
