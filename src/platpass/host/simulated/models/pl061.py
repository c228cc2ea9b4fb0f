"""ARM PrimeCell GPIO (PL061), after the TRM (ARM DDI 0190).

Eight pins. ``GPIODATA`` is reached through masked addressing: address bits [9:2] of an
access in 0x000-0x3FC select which pins it touches (a read returns the selected bits, a
write changes only them), so a driver can set one pin without a read-modify-write.
Interrupts: per pin edge or level sense (``GPIOIS``), both edges (``GPIOIBE``) or the
edge/level chosen by ``GPIOIEV``; edges latch into ``GPIORIS`` and are cleared by
``GPIOIC``; level sources follow the pin and cannot be cleared while active; ``GPIOIE``
masks into ``GPIOMIS``, whose OR is the one interrupt output.

The pad a pin shows is its output latch when ``GPIODIR`` makes it an output, otherwise what
the host drives (:meth:`Pl061.drive`). ``GPIOAFSEL`` is kept as storage: alternate
functions are board wiring the simulation does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from functools import partial

from platpass.host.simulated.clock import ModelClock
from platpass.host.simulated.models.base import DeviceModel, merge, primecell_id_registers


class Reg(IntEnum):
    """Register offsets (``DATA`` is the base of the masked window 0x000-0x3FC)."""

    DATA = 0x000
    DIR = 0x400
    IS = 0x404
    IBE = 0x408
    IEV = 0x40C
    IE = 0x410
    RIS = 0x414
    MIS = 0x418
    IC = 0x41C
    AFSEL = 0x420


DATA_WINDOW_END = 0x400
PINS = 8


class Pl061(DeviceModel):
    """The PL061 model. Host side: :meth:`drive` / :meth:`release` input pins,
    :attr:`pins` / :attr:`outputs` and :attr:`on_output` observe the pads."""

    kind = "pl061"
    size = 0x1000
    side_effect_ranges = (
        (Reg.DATA, DATA_WINDOW_END),   # masked writes; outputs may raise edges
        (Reg.DIR, 0x1C),               # DIR..IE change pads or interrupts; RIS/MIS; IC
        (Reg.IC, 4),
    )
    storage_offsets = frozenset({Reg.AFSEL})

    def __init__(self, clock: ModelClock) -> None:
        super().__init__(clock)
        self.constants = primecell_id_registers((0x61, 0x10, 0x14, 0x00))
        self._window_pads = 0
        self._window = [0] * (DATA_WINDOW_END >> 2)
        self._build_tables()
        #: Called with the new pad levels whenever an output pin changes (host side).
        self.on_output: Callable[[int], None] | None = None
        self._inputs = 0
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """Reset values: all pins inputs, no interrupt sense configured, nothing pending."""
        self.data = 0
        self.dir = 0
        self.is_ = 0
        self.ibe = 0
        self.iev = 0
        self.ie = 0
        self.edge_latched = 0
        self.afsel = 0
        self._pads = self._compute_pads()
        self._update_line()

    # -- host side ------------------------------------------------------------------------

    def drive(self, pin: int, level: bool) -> None:
        """Drive input ``pin`` high or low from outside the chip."""
        if not 0 <= pin < PINS:
            raise ValueError(f"PL061 has pins 0-{PINS - 1}, not {pin}")
        bit = 1 << pin
        self.run_step(lambda: self._set_inputs((self._inputs | bit) if level
                                               else (self._inputs & ~bit)))

    def drive_all(self, levels: int) -> None:
        """Drive all eight input levels at once (a bit per pin)."""
        self.run_step(lambda: self._set_inputs(levels & 0xFF))

    @property
    def pins(self) -> int:
        """The level of every pad (outputs as driven by the chip, inputs as driven by us)."""
        return self._pads

    @property
    def outputs(self) -> int:
        """Which pins the chip drives (``GPIODIR``)."""
        return self.dir

    # -- behaviour ------------------------------------------------------------------------

    def _compute_pads(self) -> int:
        return ((self.data & self.dir) | (self._inputs & ~self.dir)) & 0xFF

    def _set_inputs(self, levels: int) -> None:
        self._inputs = levels
        self._refresh_pads()

    def _refresh_pads(self) -> None:
        old, new = self._pads, self._compute_pads()
        self._pads = new
        rising = ~old & new
        falling = old & ~new
        edge_pins = ~self.is_ & 0xFF
        both = edge_pins & self.ibe
        single = edge_pins & ~self.ibe
        self.edge_latched |= (both & (rising | falling)) | (single & self.iev & rising) | (
            single & ~self.iev & falling)
        self.edge_latched &= 0xFF
        if (old ^ new) & self.dir and self.on_output is not None:
            self.on_output(new)
        self._update_line()

    @property
    def ris(self) -> int:
        """Raw status: latched edges on edge pins, live levels on level pins."""
        level_active = ~(self._pads ^ self.iev) & 0xFF   # high when IEV=1, low when IEV=0
        return ((self.edge_latched & ~self.is_) | (level_active & self.is_)) & 0xFF

    def _update_line(self) -> None:
        self.set_line(0, bool(self.ris & self.ie))

    # -- registers ------------------------------------------------------------------------

    def _build_tables(self) -> None:
        peekers: dict[int, Callable[[], int]] = {
            offset: partial(self._peek_data, offset >> 2)
            for offset in range(0, DATA_WINDOW_END, 4)
        }
        peekers.update({
            Reg.DIR: lambda: self.dir,
            Reg.IS: lambda: self.is_,
            Reg.IBE: lambda: self.ibe,
            Reg.IEV: lambda: self.iev,
            Reg.IE: lambda: self.ie,
            Reg.RIS: lambda: self.ris,
            Reg.MIS: lambda: self.ris & self.ie,
            Reg.AFSEL: lambda: self.afsel,
        })
        self.peekers = peekers
        writers: dict[int, Callable[[int, int], None]] = {
            offset: partial(self._write_data, offset >> 2)
            for offset in range(0, DATA_WINDOW_END, 4)
        }
        writers.update({
            Reg.DIR: self._write_dir,
            Reg.IS: lambda value, mask: self._set_byte("is_", value, mask),
            Reg.IBE: lambda value, mask: self._set_byte("ibe", value, mask),
            Reg.IEV: lambda value, mask: self._set_byte("iev", value, mask),
            Reg.IE: lambda value, mask: self._set_byte("ie", value, mask),
            Reg.IC: self._write_ic,
            Reg.AFSEL: lambda value, mask: self._set_byte("afsel", value, mask),
        })
        self.writers = writers

    def after_write(self) -> None:
        self._update_line()

    def _peek_data(self, select: int) -> int:
        return self._pads & select

    def _write_data(self, select: int, value: int, mask: int) -> None:
        if mask & 0xFF:
            self.data = ((self.data & ~select) | (value & select)) & 0xFF
            self._refresh_pads()

    def _set_byte(self, name: str, value: int, mask: int) -> None:
        setattr(self, name, merge(getattr(self, name), value, mask) & 0xFF)

    def _write_dir(self, value: int, mask: int) -> None:
        self.dir = merge(self.dir, value, mask) & 0xFF
        self._refresh_pads()

    def _write_ic(self, value: int, mask: int) -> None:
        self.edge_latched &= ~(value & mask & 0xFF)

    def mirror_values(self) -> list[int]:
        pads = self._pads
        if pads != self._window_pads:   # the 256-word DATA window only moves with the pads
            self._window_pads = pads
            self._window = [pads & select for select in range(DATA_WINDOW_END >> 2)]
        ris = self.ris
        return [*self._window,
                self.dir, self.is_, self.ibe, self.iev, self.ie, ris, ris & self.ie, self.afsel]
