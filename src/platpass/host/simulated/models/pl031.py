"""ARM PrimeCell Real Time Clock (PL031), after the TRM (ARM DDI 0224).

A 32-bit counter incremented by the 1 Hz ``CLK1HZ`` once ``RTCCR`` bit 0 has started it
(writes of 0 afterwards have no effect), ``RTCLR`` loading it, and a match interrupt raised
when the counter reaches ``RTCMR``. The model ticks once a second - the tick is what moves
the counter in the memfd mirror and checks the match - and computes the counter from the
clock between ticks, so trapped reads are exact whatever the tick latency.

Mappable: no side-effect ranges
-------------------------------
Every PL031 register is either read-only (``RTCDR``, ``RTCRIS``, ``RTCMIS``, the IDs),
read/write storage whose effect may wait for the next clock edge (``RTCMR``, ``RTCIMSC``,
``RTCCR``), or a write whose effect the backend can infer from the value left behind
(``RTCLR``: a new value loads the counter; ``RTCICR``: any set bit clears that interrupt).
So the model declares no side-effect ranges and its whole page may be mapped into a guest.
Writes through the mapping land in the memfd and are taken over by the backend at the next
*event boundary* (:mod:`platpass.host.simulated.backend`): a trapped access, an unmask of the
line (what the guest's EOI causes through the KVM resample eventfd), the 1 Hz tick, or a
host-side input (:meth:`Pl031.set_time`). At a boundary, before anything else happens:

* ``RTCLR`` different from the value last loaded -> the counter is loaded with it;
* ``RTCICR`` non-zero -> those ``RTCRIS`` bits are cleared and ``RTCICR`` reads 0 again;
* ``RTCMR``, ``RTCIMSC``, ``RTCCR`` -> applied (the line level is recomputed; the next tick
  compares the counter with the new match value);
* writes to ``RTCDR``, ``RTCRIS``, ``RTCMIS``, the IDs or reserved space -> undone.

Because the reconcile runs before the step at the boundary, a guest ISR that acks with a
mapped ``RTCICR`` write and then EOIs sees no spurious re-delivery: the unmask reconciles
first, the line is already low when the re-fire check runs. The tick runs even while the
counter is stopped, since with the page mapped the 1 Hz edge is the only boundary that
sees a mapped ``RTCCR`` start.

Fidelity limits of a mapped PL031 (silicon has none of these):

* a mapped ``RTCLR`` write takes effect at the next boundary, at most one tick (1 s) later
  when the guest makes no trapped access: until then ``RTCDR`` shows the old count, and the
  counter is loaded at the boundary, so the RTC runs behind by the time between the write
  and that boundary. The guest cannot force a boundary (every PL031 access is mapped);
  a VMM that needs exact ``RTCLR`` timing declines the mapping (a vfio-user client that
  takes no fds, ``attach_socket(..., map_regions=False)``) and every access is trapped;
* a mapped ``RTCLR`` write of the value ``RTCLR`` already holds is invisible (the memfd
  does not change), so it does not reload the counter;
* a mapped ``RTCICR`` write clears ``RTCRIS``/``RTCMIS`` (and lowers the line) only at the
  next boundary; a guest that reads ``RTCRIS`` right after acking still sees the bit. The
  guest's EOI is a boundary, so the interrupt itself never fires twice - provided the
  host's KVM signals the resample eventfd at the EOI. PVM signals it at injection, before
  the ISR's ack: the unmask then still sees the line and re-fires (as it would with a
  trapped ack), and the next tick takes the ack over;
* mapped writes between two boundaries are applied together, in register order: two
  writes to one register count as the last one (harmless for the write-1-to-clear
  ``RTCICR``; of two ``RTCLR`` values only the second is loaded), and a line raised and
  lowered again within the batch is never reported (interrupts coalesce). ``RTCMR`` is
  only compared at ticks, which are boundaries, so no match is missed.
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
    # No side-effect ranges: the whole page may be mapped (see the module docstring).
    # Mapped writes to these are taken over at the next event boundary as register writes.
    storage_offsets = frozenset({Reg.MR, Reg.LR, Reg.CR, Reg.IMSC, Reg.ICR})

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
        else:
            self._schedule_tick()

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

    def resume(self) -> None:
        """The restored counter (base and the clock time it was loaded at: the monotonic
        clock is the machine's, so it keeps counting) ticks again on its next second."""
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        self.cancel(self._tick)
        elapsed = self.clock.now() - self._base_time
        next_second = math.floor(elapsed + _EPSILON) + 1
        self._tick = self.call_later(next_second - elapsed, self._on_tick)

    def _on_tick(self) -> None:
        # The backend has taken over mapped writes before this step: a new RTCMR/RTCLR is
        # compared here, at the right second. Rescheduling replaces any tick a mapped
        # RTCLR load scheduled during that reconcile.
        if self.started and self.counter == self.mr:
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
            # Write-only: reads as 0, and mirroring it is what lets the backend notice a
            # mapped write-1-to-clear (and put the 0 back).
            Reg.ICR: lambda: 0,
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
