"""ARM Watchdog Module (SP805), after the TRM (ARM DDI 0270).

A 32-bit down-counter clocked by ``WDOGCLK`` while ``WdogControl.INTEN`` is set. When it
reaches zero it raises ``WDOGINT`` (``WdogRIS``) and reloads from ``WdogLoad``; if it reaches
zero again while the interrupt is still uncleared and ``RESEN`` is set, it asserts the
reset output ``WDOGRES`` - on a board that resets the SoC, here the host observes it
(:attr:`Sp805.reset_asserted`, :attr:`Sp805.resets`, :attr:`Sp805.on_reset`); since nothing
resets the model, the output stays asserted until ``WdogIntClr`` clears the interrupt. Writing
``WdogIntClr`` clears the interrupt and reloads the counter; writing ``WdogLoad`` reloads it
at once; re-enabling ``INTEN`` reloads it. ``WdogLock``: writing 0x1ACCE551 enables writes
to every other register, any other value disables them; it reads 1 while locked.

No polling: ``WdogValue`` is computed from the model clock when read, and the one timer is
set for the moment the counter reaches zero. Because the value moves at ``WDOGCLK``, the
memfd mirror cannot follow it: ``WdogValue`` is a side-effect register (always trapped) and
reads as zero in the memfd.
The integration-test registers (``WdogITCR``/``WdogITOP``) drive the outputs directly when
test mode is on, as on silicon.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import IntEnum, IntFlag

from platpass.host.simulated.clock import Cancellable, ModelClock
from platpass.host.simulated.models.base import DeviceModel, merge, primecell_id_registers


class Reg(IntEnum):
    """Register offsets."""

    LOAD = 0x000
    VALUE = 0x004
    CONTROL = 0x008
    INTCLR = 0x00C
    RIS = 0x010
    MIS = 0x014
    LOCK = 0xC00
    ITCR = 0xF00
    ITOP = 0xF04


class Control(IntFlag):
    """``WdogControl`` bits."""

    INTEN = 1 << 0
    RESEN = 1 << 1


UNLOCK_KEY = 0x1ACCE551
LOAD_RESET = 0xFFFF_FFFF
DEFAULT_WDOGCLK = 1_000_000
_MASK32 = 0xFFFF_FFFF
_INTEN, _RESEN = int(Control.INTEN), int(Control.RESEN)


class Sp805(DeviceModel):
    """The SP805 model. Host side: :attr:`reset_asserted`, :attr:`resets` (rising edges
    of ``WDOGRES``) and :attr:`on_reset`."""

    kind = "sp805"
    size = 0x1000
    side_effect_ranges = (
        (Reg.LOAD, 0x18),      # every register: lock-gated writes, a moving VALUE, W1C
        (Reg.LOCK, 4),
        (Reg.ITCR, 8),
    )

    def __init__(self, clock: ModelClock, *, rate: int | None = None) -> None:
        super().__init__(clock)
        self.rate = rate or DEFAULT_WDOGCLK
        self.constants = primecell_id_registers((0x05, 0x18, 0x14, 0x00))
        self._build_tables()
        #: Called with True/False when the reset output changes (host side).
        self.on_reset: Callable[[bool], None] | None = None
        #: How many times ``WDOGRES`` has been asserted.
        self.resets = 0
        self._expiry: Cancellable | None = None
        self._res_seen = False
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """Reset values: load 0xFFFFFFFF, stopped, unlocked, nothing pending."""
        self.cancel(self._expiry)
        self._expiry = None
        self.load = LOAD_RESET
        self.control = 0
        self.ris = 0
        self.locked = False
        self.itcr = 0
        self.itop = 0
        self._res = False
        self._stopped_value = LOAD_RESET
        self._zero_at = 0.0
        self._count_from = LOAD_RESET
        self._update_outputs()

    # -- host side ------------------------------------------------------------------------

    @property
    def reset_asserted(self) -> bool:
        """Level of ``WDOGRES``."""
        if self.itcr & 1:
            return bool(self.itop & 1)
        return self._res and bool(self.control & _RESEN)

    @property
    def running(self) -> bool:
        """True while the counter decrements."""
        return bool(self.control & _INTEN)

    # -- behaviour ------------------------------------------------------------------------

    @property
    def value(self) -> int:
        """The counter now."""
        if not self.running:
            return self._stopped_value
        left = self._zero_at - self.clock.now()
        return max(0, min(self._count_from, math.ceil(left * self.rate - 1e-6)))

    def _restart(self, count: int, *, reload_cycle: bool = False) -> None:
        """Count down from ``count``; schedule the moment it reaches zero.

        ``reload_cycle``: the counter has just reached zero, and taking ``count`` back in
        costs one ``WDOGCLK`` cycle, so a full period is ``WdogLoad + 1`` cycles (what
        Linux's sp805_wdt assumes: time left = value + load + 1 before the interrupt).
        """
        self.cancel(self._expiry)
        self._expiry = None
        self._stopped_value = count
        self._count_from = count
        if not self.running:
            return
        ticks = count + 1 if reload_cycle else max(count, 1)
        self._zero_at = self.clock.now() + ticks / self.rate
        self._expiry = self.call_later(ticks / self.rate, self._reached_zero)

    def resume(self) -> None:
        """A restored running counter reaches zero when it was going to (at once if that
        moment passed while no process served the device)."""
        self.cancel(self._expiry)
        self._expiry = None
        if self.running:
            self._expiry = self.call_later(max(self._zero_at - self.clock.now(), 0.0),
                                           self._reached_zero)

    def _reached_zero(self) -> None:
        self._expiry = None
        if self.ris:
            self._res = True
        self.ris = 1
        self._update_outputs()
        self._restart(self.load, reload_cycle=True)

    def _update_outputs(self) -> None:
        before = self._res_seen
        after = self.reset_asserted
        if after and not before:
            self.resets += 1
        if after != before and self.on_reset is not None:
            self.on_reset(after)
        self._res_seen = after
        if self.itcr & 1:
            self.set_line(0, bool(self.itop & 2))
        else:
            self.set_line(0, bool(self.ris and self.control & _INTEN))

    # -- registers ------------------------------------------------------------------------

    def _build_tables(self) -> None:
        self.peekers = {
            Reg.LOAD: lambda: self.load,
            Reg.CONTROL: lambda: self.control,
            Reg.RIS: lambda: self.ris,
            Reg.MIS: lambda: int(bool(self.ris and self.control & _INTEN)),
            Reg.LOCK: lambda: int(self.locked),
            Reg.ITCR: lambda: self.itcr,
        }
        self._unlocked_writers: dict[int, Callable[[int, int], None]] = {
            Reg.LOAD: self._write_load,
            Reg.CONTROL: self._write_control,
            Reg.INTCLR: self._write_intclr,
            Reg.ITCR: self._write_itcr,
            Reg.ITOP: self._write_itop,
        }
        self.writers = {offset: self._unless_locked(write)
                        for offset, write in self._unlocked_writers.items()}
        self.writers[Reg.LOCK] = self._write_lock
        # WdogValue moves at WDOGCLK between steps, so the mirror cannot follow it: it is
        # read through the model only (a side-effect range) and reads as 0 in the memfd.
        self.readers = {Reg.VALUE: lambda mask: self.value}

    def _unless_locked(self, write: Callable[[int, int], None]) -> Callable[[int, int], None]:
        """``write``, ignored while the registers are locked."""

        def guarded(value: int, mask: int) -> None:
            if not self.locked:
                write(value, mask)

        return guarded

    def peek_reg(self, offset: int) -> int:
        if offset == Reg.VALUE:
            return self.value
        return super().peek_reg(offset)

    def after_write(self) -> None:
        self._update_outputs()

    def _write_lock(self, value: int, mask: int) -> None:
        # Only the whole key, written in one access, unlocks; anything else locks.
        self.locked = mask != _MASK32 or value != UNLOCK_KEY

    def _write_load(self, value: int, mask: int) -> None:
        self.load = merge(self.load, value, mask) & _MASK32
        self._restart(self.load)

    def _write_control(self, value: int, mask: int) -> None:
        was_running = self.running
        self.control = merge(self.control, value, mask) & 0x3
        if self.running and not was_running:
            self._restart(self.load)   # enabling reloads from WdogLoad
        elif was_running and not self.running:
            held = self.value
            self.cancel(self._expiry)
            self._expiry = None
            self._stopped_value = held

    def _write_intclr(self, value: int, mask: int) -> None:
        self.ris = 0
        self._res = False
        self._restart(self.load)

    def _write_itcr(self, value: int, mask: int) -> None:
        self.itcr = merge(self.itcr, value, mask) & 1

    def _write_itop(self, value: int, mask: int) -> None:
        self.itop = merge(self.itop, value, mask) & 3
