"""ARM PrimeCell UART (PL011), after the Technical Reference Manual (ARM DDI 0183).

What is modelled: the TX and RX FIFOs (32 entries from revision r1p5, 16 before; 1-byte
holding registers when ``UARTLCR_H.FEN`` is clear), a transmitter that shifts one character
per character time computed from ``UARTCLK``, ``IBRD``/``FBRD`` and the frame format, the
flags of ``UARTFR``, receive errors (``UARTRSR``/``UARTECR``, overrun and break), the
interrupt sources TX, RX, RT (receive timeout after 32 bit periods of silence), OE and BE
with ``IMSC``/``RIS``/``MIS``/``ICR``, loopback (``UARTCR.LBE``), ``UARTDMACR`` as storage
(the DMA request lines are not connected to anything in simulation; the driver traps it
anyway), and the PrimeCell identification registers.

The TX and RX interrupts follow the TRM: they are based on the FIFO level *passing through*
the trigger level, not on the level itself (TX: the FIFO drains to the trigger level or
below; RX: it fills to the trigger level or above). Linux's amba-pl011 primes the TX FIFO
before unmasking TXIM for exactly this reason.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from platpass.host.simulated.clock import ModelClock
from platpass.host.simulated.models.base import merge, primecell_id_registers
from platpass.host.simulated.models.uart_common import UartModel


class Reg(IntEnum):
    """Register offsets."""

    DR = 0x000
    RSR_ECR = 0x004
    FR = 0x018
    ILPR = 0x020
    IBRD = 0x024
    FBRD = 0x028
    LCR_H = 0x02C
    CR = 0x030
    IFLS = 0x034
    IMSC = 0x038
    RIS = 0x03C
    MIS = 0x040
    ICR = 0x044
    DMACR = 0x048


class Flag(IntFlag):
    """``UARTFR`` bits."""

    CTS = 1 << 0
    DSR = 1 << 1
    DCD = 1 << 2
    BUSY = 1 << 3
    RXFE = 1 << 4
    TXFF = 1 << 5
    RXFF = 1 << 6
    TXFE = 1 << 7
    RI = 1 << 8


class Lcr(IntFlag):
    """``UARTLCR_H`` bits (WLEN is the two-bit field at 6:5)."""

    BRK = 1 << 0
    PEN = 1 << 1
    EPS = 1 << 2
    STP2 = 1 << 3
    FEN = 1 << 4
    SPS = 1 << 7


class Cr(IntFlag):
    """``UARTCR`` bits."""

    UARTEN = 1 << 0
    SIREN = 1 << 1
    SIRLP = 1 << 2
    LBE = 1 << 7
    TXE = 1 << 8
    RXE = 1 << 9
    DTR = 1 << 10
    RTS = 1 << 11
    OUT1 = 1 << 12
    OUT2 = 1 << 13
    RTSEN = 1 << 14
    CTSEN = 1 << 15


class Int(IntFlag):
    """Interrupt bits shared by ``IMSC``, ``RIS``, ``MIS`` and ``ICR``."""

    RIM = 1 << 0
    CTSM = 1 << 1
    DCDM = 1 << 2
    DSRM = 1 << 3
    RX = 1 << 4
    TX = 1 << 5
    RT = 1 << 6
    FE = 1 << 7
    PE = 1 << 8
    BE = 1 << 9
    OE = 1 << 10


class DataError(IntFlag):
    """Error bits a received character carries in ``UARTDR`` (bits 11:8)."""

    FE = 1 << 8
    PE = 1 << 9
    BE = 1 << 10
    OE = 1 << 11


ALL_INTERRUPTS = 0x7FF
CR_RESET = int(Cr.TXE | Cr.RXE)
# Plain ints for the hot paths: IntFlag arithmetic costs a microsecond per operation.
_BUSY, _RXFE, _TXFF, _RXFF, _TXFE = (int(f) for f in (Flag.BUSY, Flag.RXFE, Flag.TXFF,
                                                       Flag.RXFF, Flag.TXFE))
_FEN, _PEN, _STP2 = int(Lcr.FEN), int(Lcr.PEN), int(Lcr.STP2)
_UARTEN, _TXE, _RXE, _LBE = int(Cr.UARTEN), int(Cr.TXE), int(Cr.RXE), int(Cr.LBE)
_TX_ON, _RX_ON = _UARTEN | _TXE, _UARTEN | _RXE
_INT_RX, _INT_TX, _INT_RT, _INT_BE, _INT_OE = (int(i) for i in (Int.RX, Int.TX, Int.RT,
                                                                 Int.BE, Int.OE))
_DATA_BE, _DATA_OE = int(DataError.BE), int(DataError.OE)
IFLS_RESET = 0x12
#: IFLS level selections, in eighths of the FIFO depth.
_IFLS_EIGHTHS = {0: 1, 1: 2, 2: 4, 3: 6, 4: 7}
DEFAULT_UARTCLK = 24_000_000
DEFAULT_BAUD = 115_200


class Pl011(UartModel):
    """The PL011 model. Host side: :attr:`tx_output` / :attr:`on_tx` / :meth:`take_tx`
    observe what the UART transmits, :meth:`inject_rx` and :meth:`inject_break` feed its
    receiver."""

    kind = "pl011"
    size = 0x1000
    side_effect_ranges = (
        (Reg.DR, 8),          # DR pops/pushes FIFOs; ECR write clears errors
        (Reg.LCR_H, 0x20),    # LCR_H (FIFO enable flushes), CR, IFLS, IMSC, RIS/MIS, ICR, DMACR
    )
    storage_offsets = frozenset({Reg.ILPR, Reg.IBRD, Reg.FBRD})
    break_errors = _DATA_BE

    def __init__(self, clock: ModelClock, *, uartclk: int | None = None,
                 revision: int = 3) -> None:
        super().__init__(clock)
        self.uartclk = uartclk or DEFAULT_UARTCLK
        self.revision = revision
        #: FIFO depth: r1p5 (revision 3) and later have 32-entry FIFOs.
        self.depth = 32 if revision >= 3 else 16
        self.constants = primecell_id_registers((0x11, 0x10, (revision << 4) | 0x4, 0x00))
        self._build_tables()
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """The state after nPRESETn: registers at their TRM reset values, FIFOs empty."""
        self._reset_fifos()
        self.rsr = 0
        self.ilpr = 0
        self.ibrd = 0
        self.fbrd = 0
        self.lcr_h = 0
        self.cr = int(CR_RESET)
        self.ifls = IFLS_RESET
        self.imsc = 0
        self.ris = 0
        self.dmacr = 0
        self._overrun_pending = False
        self._update_line()

    # inject_rx / inject_break / take_tx come from UartModel; the RX pin stays connected
    # in loopback (the receiver's own RXE/UARTEN gate decides).

    def _loopback(self) -> bool:
        return bool(self.cr & _LBE)

    # -- derived state ------------------------------------------------------------------

    @property  # (UartModel declares a plain attribute, which the 16550 model sets)
    def fifo_enabled(self) -> bool:  # type: ignore[override]
        return bool(self.lcr_h & _FEN)

    def _tx_trigger(self) -> int:
        return self.depth * _IFLS_EIGHTHS.get(self.ifls & 0x7, 4) // 8

    def _rx_trigger(self) -> int:
        return self.depth * _IFLS_EIGHTHS.get((self.ifls >> 3) & 0x7, 4) // 8

    def _bit_time(self) -> float:
        divisor = self.ibrd + self.fbrd / 64
        if divisor <= 0:
            return 1 / DEFAULT_BAUD
        return 16 * divisor / self.uartclk

    def char_time(self) -> float:
        """Seconds to shift one frame: start, data, parity, stop bits."""
        bits = 1 + 5 + ((self.lcr_h >> 5) & 3)
        bits += 1 if self.lcr_h & _PEN else 0
        bits += 2 if self.lcr_h & _STP2 else 1
        return bits * self._bit_time()

    def _flags(self) -> int:
        tx = len(self.tx_fifo)
        rx = len(self.rx_fifo)
        capacity = self.depth if self.lcr_h & _FEN else 1
        flags = _BUSY if tx or self._shifting else 0
        if not rx:
            flags |= _RXFE
        if tx >= capacity:
            flags |= _TXFF
        if rx >= capacity:
            flags |= _RXFF
        if not tx:
            flags |= _TXFE
        return flags

    def _update_line(self) -> None:
        self.set_line(0, bool(self.ris & self.imsc))

    # -- transmitter ----------------------------------------------------------------------

    def _tx_enabled(self) -> bool:
        return (self.cr & _TX_ON) == _TX_ON

    def _push_tx(self, byte: int) -> None:
        if len(self.tx_fifo) >= self.capacity:
            return  # writes to a full FIFO are lost, as on silicon
        self.tx_fifo.append(byte)
        if self._tx_level_above_trigger():
            self.ris &= ~_INT_TX
        self._kick_tx()

    def _tx_level_above_trigger(self) -> bool:
        if self.fifo_enabled:
            return len(self.tx_fifo) > self._tx_trigger()
        return bool(self.tx_fifo)

    def _kick_tx(self) -> None:
        if self._shifting or not self.tx_fifo or not self._tx_enabled():
            return
        was_above = self._tx_level_above_trigger()
        byte = self.tx_fifo.popleft()
        if was_above and not self._tx_level_above_trigger():
            self.ris |= _INT_TX
        self._start_shift(byte)

    # -- receiver -------------------------------------------------------------------------

    def _receive(self, byte: int, errors: int = 0) -> None:
        if (self.cr & _RX_ON) != _RX_ON:
            return  # receiver off: the character is never sampled
        if len(self.rx_fifo) >= self.capacity:
            self.rsr |= 0x8
            self.ris |= _INT_OE
            self._overrun_pending = True
            self._update_line()
            return
        if self._overrun_pending:
            errors |= _DATA_OE
            self._overrun_pending = False
        below = len(self.rx_fifo) < self._rx_level()
        self.rx_fifo.append((byte & 0xFF) | errors)
        if errors & _DATA_BE:
            self.ris |= _INT_BE
        if below and len(self.rx_fifo) >= self._rx_level():
            self.ris |= _INT_RX
        self._arm_rx_timeout(self._rx_timeout_delay())
        self._update_line()

    def _rx_timeout_delay(self) -> float:
        """32 bit periods (the PL011's receive timeout)."""
        return 32 * self._bit_time()

    def _rx_level(self) -> int:
        return self._rx_trigger() if self.fifo_enabled else 1

    def _rx_timed_out(self) -> None:
        self.ris |= _INT_RT

    def _pop_rx(self) -> int:
        if not self.rx_fifo:
            return 0
        entry = self.rx_fifo.popleft()
        self.rsr = (self.rsr & 0x8) | ((entry >> 8) & 0x7)
        if len(self.rx_fifo) < self._rx_level():
            self.ris &= ~_INT_RX
        if not self.rx_fifo:
            self.ris &= ~_INT_RT
            self._disarm_rx_timeout()
        self._update_line()
        return entry

    def _flush(self) -> None:
        self.tx_fifo.clear()
        self.rx_fifo.clear()
        self.ris &= ~(_INT_RX | _INT_RT)

    # -- registers ------------------------------------------------------------------------

    def _build_tables(self) -> None:
        self.peekers = {
            Reg.DR: lambda: self.rx_fifo[0] if self.rx_fifo else 0,
            Reg.RSR_ECR: lambda: self.rsr,
            Reg.FR: self._flags,
            Reg.ILPR: lambda: self.ilpr,
            Reg.IBRD: lambda: self.ibrd,
            Reg.FBRD: lambda: self.fbrd,
            Reg.LCR_H: lambda: self.lcr_h,
            Reg.CR: lambda: self.cr,
            Reg.IFLS: lambda: self.ifls,
            Reg.IMSC: lambda: self.imsc,
            Reg.RIS: lambda: self.ris,
            Reg.MIS: lambda: self.ris & self.imsc,
            Reg.DMACR: lambda: self.dmacr,
        }
        self.readers = {Reg.DR: self._read_dr}
        self.writers = {
            Reg.DR: self._write_dr,
            Reg.RSR_ECR: self._write_ecr,
            Reg.ILPR: self._write_ilpr,
            Reg.IBRD: self._write_ibrd,
            Reg.FBRD: self._write_fbrd,
            Reg.LCR_H: self._write_lcr_h,
            Reg.CR: self._write_cr,
            Reg.IFLS: self._write_ifls,
            Reg.IMSC: self._write_imsc,
            Reg.ICR: self._write_icr,
            Reg.DMACR: self._write_dmacr,
        }

    def after_write(self) -> None:
        self._update_line()

    def _read_dr(self, mask: int) -> int:
        return self._pop_rx() if mask & 0xFF else 0

    def _write_dr(self, value: int, mask: int) -> None:
        if mask & 0xFF:
            self._push_tx(value & 0xFF)

    def _write_ecr(self, value: int, mask: int) -> None:
        self.rsr = 0

    def _write_ilpr(self, value: int, mask: int) -> None:
        self.ilpr = merge(self.ilpr, value, mask) & 0xFF

    def _write_ibrd(self, value: int, mask: int) -> None:
        self.ibrd = merge(self.ibrd, value, mask) & 0xFFFF

    def _write_fbrd(self, value: int, mask: int) -> None:
        self.fbrd = merge(self.fbrd, value, mask) & 0x3F

    def _write_lcr_h(self, value: int, mask: int) -> None:
        new = merge(self.lcr_h, value, mask) & 0xFF
        if (new ^ self.lcr_h) & _FEN:
            self._flush()  # changing FIFO mode empties both FIFOs
        self.lcr_h = new

    def _write_cr(self, value: int, mask: int) -> None:
        self.cr = merge(self.cr, value, mask) & 0xFFFF
        self._kick_tx()

    def _write_ifls(self, value: int, mask: int) -> None:
        self.ifls = merge(self.ifls, value, mask) & 0x3F

    def _write_imsc(self, value: int, mask: int) -> None:
        self.imsc = merge(self.imsc, value, mask) & ALL_INTERRUPTS

    def _write_icr(self, value: int, mask: int) -> None:
        self.ris &= ~(value & mask & ALL_INTERRUPTS)

    def _write_dmacr(self, value: int, mask: int) -> None:
        self.dmacr = merge(self.dmacr, value, mask) & 0x7
