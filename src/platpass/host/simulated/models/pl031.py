"""ARM PrimeCell Real Time Clock (PL031), after the TRM (ARM DDI 0224).

A 32-bit counter incremented by the 1 Hz ``CLK1HZ`` once ``RTCCR`` bit 0 has started it
(writes of 0 afterwards have no effect), ``RTCLR`` loading it, and a match interrupt raised
when the counter reaches ``RTCMR``. The model ticks once a second while running - the tick
is what moves the counter in the memfd mirror and checks the match - and computes the
counter from the clock between ticks, so reads are exact whatever the tick latency.
"""

from __future__ import annotations

import math
import time
from enum import IntEnum

from platpass.host.simulated.clock import Cancellable, ModelClock
from platpass.host.simulated.models.base import DeviceModel, merge, primecell_id_registers


class Reg(IntEnum):
    """Register offsets."""

    DR = 0x000
    MR = 0x004
    LR = 0x008
    CR = 0x00C
    IMSC = 0x010
    RIS = 0x014
    MIS = 0x018
    ICR = 0x01C


_MASK32 = 0xFFFF_FFFF
#: Slack for float rounding when a tick lands exactly on a second boundary.
_EPSILON = 1e-9


class Pl031(DeviceModel):
    """The PL031 model. Host side: :meth:`set_time` (as if the RTC had been set while the
    board was off) and :attr:`counter`."""

    kind = "pl031"
    size = 0x1000
    side_effect_ranges = (
        (Reg.LR, 8),       # LR loads the counter; CR starts it
        (Reg.IMSC, 4),     # moves the interrupt line
        (Reg.ICR, 4),      # write-1-to-clear
    )
    storage_offsets = frozenset({Reg.MR})

    def __init__(self, clock: ModelClock, *, initial: int | None = None,
                 running: bool = True) -> None:
        """``initial``: counter value at power-on (default: host wall-clock seconds);
        ``running``: whether firmware has already started the counter (boards do)."""
        super().__init__(clock)
        self.constants = primecell_id_registers((0x31, 0x10, 0x14, 0x00))
        self._build_tables()
        self._tick: Cancellable | None = None
        self.mr = 0
        self.lr = 0
        self.imsc = 0
        self.ris = 0
        self._base = (int(time.time()) if initial is None else initial) & _MASK32
        self._base_time = clock.now()
        self.started = False
        if running:
            self._start()

    # -- host side ------------------------------------------------------------------------

    @property
    def counter(self) -> int:
        """The counter value now."""
        if not self.started:
            return self._base
        elapsed = math.floor(self.clock.now() - self._base_time + _EPSILON)
        return (self._base + elapsed) & _MASK32

    def set_time(self, seconds: int) -> None:
        """Set the counter from the host side (a battery-backed RTC set by the board)."""
        self.run_step(lambda: self._load(seconds))

    # -- behaviour ------------------------------------------------------------------------

    def _start(self) -> None:
        self.started = True
        self._base_time = self.clock.now()
        self._schedule_tick()

    def _load(self, value: int) -> None:
        self._base = value & _MASK32
        self._base_time = self.clock.now()
        if self.started:
            self._schedule_tick()

    def _schedule_tick(self) -> None:
        self.cancel(self._tick)
        elapsed = self.clock.now() - self._base_time
        next_second = math.floor(elapsed + _EPSILON) + 1
        self._tick = self.call_later(next_second - elapsed, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        if self.counter == self.mr:
            self.ris = 1
            self._update_line()
        self._schedule_tick()

    def _update_line(self) -> None:
        self.set_line(0, bool(self.ris & self.imsc))

    # -- registers ------------------------------------------------------------------------

    def _build_tables(self) -> None:
        self.peekers = {
            Reg.DR: lambda: self.counter,
            Reg.MR: lambda: self.mr,
            Reg.LR: lambda: self.lr,
            Reg.CR: lambda: int(self.started),
            Reg.IMSC: lambda: self.imsc,
            Reg.RIS: lambda: self.ris,
            Reg.MIS: lambda: self.ris & self.imsc,
        }
        self.writers = {
            Reg.MR: self._write_mr,
            Reg.LR: self._write_lr,
            Reg.CR: self._write_cr,
            Reg.IMSC: self._write_imsc,
            Reg.ICR: self._write_icr,
        }

    def after_write(self) -> None:
        self._update_line()

    def _write_mr(self, value: int, mask: int) -> None:
        self.mr = merge(self.mr, value, mask) & _MASK32

    def _write_lr(self, value: int, mask: int) -> None:
        self.lr = merge(self.lr, value, mask) & _MASK32
        self._load(self.lr)

    def _write_cr(self, value: int, mask: int) -> None:
        if value & mask & 1 and not self.started:
            self._start()

    def _write_imsc(self, value: int, mask: int) -> None:
        self.imsc = merge(self.imsc, value, mask) & 1

    def _write_icr(self, value: int, mask: int) -> None:
        if value & mask & 1:
            self.ris = 0
