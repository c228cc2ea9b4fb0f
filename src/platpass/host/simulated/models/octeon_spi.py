"""Cavium Octeon / ThunderX MPI SPI master, with SPI EEPROMs (AT25 family) on its chip
selects.

The MPI is a polled SPI master with a nine-byte shift buffer and no DMA. Register facts are
those Linux's ``drivers/spi/spi-cavium.h`` (``cvmx_mpi_*``) and ``spi-cavium.c`` use, the
same block on Octeon (``cavium,octeon-3010-spi``, registers at offset 0) and ThunderX (a PCI
function, the block at BAR0 + 0x1000); every register is 64 bits wide:

* ``MPI_CFG`` (0x00): ``enable`` [0], ``idlelo`` [1], ``clk_cont`` [2], ``wireor`` [3],
  ``lsbfirst`` [4], ``int_ena`` [5], ``csena`` [6], ``cshi`` [7], ``idleclks`` [9:8],
  ``tritx`` [10], ``cslate`` [11], ``csena0..3`` [15:12], ``clkdiv`` [28:16]. Storage: the
  model shifts whole bytes instantly, so clock, phase and idle settings change nothing it
  can show.
* ``MPI_STS`` (0x08): ``busy`` [0] (always 0: a transfer is over when the ``MPI_TX``
  write returns), ``rxnum`` [12:8] (bytes received by the last transfer).
* ``MPI_TX`` (0x10): writing it runs a transfer: ``totnum`` [4:0] bytes are shifted, the
  first ``txnum`` [12:8] of them sent from ``MPI_DAT0..``, the rest sent as 0 (the line is
  not driven); every received byte lands in ``MPI_DAT<i>``. ``csid`` [21:20] picks the chip
  select, asserted for the transfer; ``leavecs`` [16] keeps it asserted afterwards (the
  next transfer continues the same command), else it is released at the end.
* ``MPI_DAT0..8`` (0x80 + 8 * i): the shift buffer, one byte per register. Bytes past the
  ninth of a transfer (``totnum`` is 5 bits) are shifted with nothing stored: sent as 0,
  received into nothing.

``int_ena`` is kept as storage and the interrupt output never rises: Linux's MPI drivers
poll ``busy`` and never enable it, and no public text says how the interrupt is
acknowledged. Selecting a different chip select while one is held releases the held one
first (one select line at a time), and clearing ``enable`` releases a held one (what
spi-thunderx's remove, writing 0 to ``MPI_CFG``, relies on to leave the bus idle).

:class:`SpiEeprom` is an AT25-style SPI EEPROM (Atmel AT25, ST M95, Microchip 25AA/25LC:
the command set Linux's ``at25`` driver uses): WREN 0x06, WRDI 0x04, RDSR 0x05, WRSR 0x01,
READ 0x03, WRITE 0x02, 1-3 address bytes, and on 8-bit-address parts larger than 256 bytes
address bit 8 in opcode bit 3. A WRITE needs the write-enable latch, stays inside one page
(the address wraps at the page boundary, as the parts do), is committed when chip select is
released, then keeps the part busy (RDSR bit 0) for the write cycle time, during which only
RDSR is answered. The latch clears after each write cycle and on WRDI.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from functools import partial
from typing import Any

from platpass.host.simulated.clock import ModelClock
from platpass.host.simulated.models.base import DeviceModel, merge, plain_state

_MASK64 = (1 << 64) - 1


class Reg(IntEnum):
    """Register offsets."""

    CFG = 0x00
    STS = 0x08
    TX = 0x10
    DAT0 = 0x80


#: Bytes in the shift buffer (``MPI_DAT0..8``; Linux's ``OCTEON_SPI_MAX_BYTES``).
DATA_BYTES = 9
#: Chip selects (``csid`` is two bits).
CHIP_SELECTS = 4

TX_TOTNUM = 0x1F
TX_TXNUM_SHIFT = 8
TX_LEAVECS = 1 << 16
TX_CSID_SHIFT = 20


class SpiTarget:
    """What a device on an SPI chip select does: told when it is selected and released,
    and given each byte shifted out, it returns the byte it shifts back."""

    def snapshot(self) -> dict[str, Any]:
        """The device's state as plain data (see :meth:`DeviceModel.snapshot`)."""
        return plain_state(self)

    def restore(self, state: dict[str, Any]) -> None:
        """Take a :meth:`snapshot` back."""
        for name, value in state.items():
            setattr(self, name, value)

    def select(self) -> None:
        """Chip select asserted: a new command starts."""

    def exchange(self, mosi: int) -> int:
        """One byte each way; ``mosi`` is what the master sends."""
        return 0xFF

    def release(self) -> None:
        """Chip select released: the command ends."""


class Command(IntEnum):
    """AT25 opcodes."""

    WRSR = 0x01
    WRITE = 0x02
    READ = 0x03
    WRDI = 0x04
    RDSR = 0x05
    WREN = 0x06


SR_BUSY = 0x01  # "WIP" / Linux's AT25_SR_nRDY
SR_WEL = 0x02
SR_BP = 0x0C  # block protect bits: storage (WRSR), not enforced
#: A byte or page write cycle of an AT25-class part (tWC, datasheet maximum).
WRITE_CYCLE_S = 0.005


class SpiEeprom(SpiTarget):
    """An AT25-style SPI EEPROM of ``size`` bytes (see the module docstring).

    ``data`` is the array's content (the host side reads and seeds it); ``writes`` counts
    committed write cycles.
    """

    def __init__(self, clock: ModelClock, size: int, page_size: int, address_bytes: int,
                 *, fill: int = 0xFF, write_cycle: float = WRITE_CYCLE_S) -> None:
        if size <= 0 or page_size <= 0 or size % page_size:
            raise ValueError(f"EEPROM of {size} bytes cannot have {page_size}-byte pages")
        if address_bytes not in (1, 2, 3):
            raise ValueError(f"{address_bytes} address bytes: AT25 parts use 1, 2 or 3")
        limit = 1 << (8 * address_bytes + (1 if address_bytes == 1 else 0))
        if size > limit:
            raise ValueError(f"{size} bytes do not fit {8 * address_bytes}-bit addresses")
        self.clock = clock
        self.size = size
        self.page_size = page_size
        self.address_bytes = address_bytes
        self.write_cycle = write_cycle
        self.data = bytearray([fill]) * size
        self.writes = 0
        self._status = 0
        self._busy_until = 0.0
        self._reset_command()

    def _reset_command(self) -> None:
        self._opcode: int | None = None
        self._address = 0
        self._address_left = 0
        self._pending: dict[int, int] = {}
        self._cursor = 0

    @property
    def busy(self) -> bool:
        """A write cycle is running."""
        return self.clock.now() < self._busy_until

    @property
    def status(self) -> int:
        """What RDSR returns now."""
        return self._status | (SR_BUSY if self.busy else 0)

    def select(self) -> None:
        self._reset_command()

    def exchange(self, mosi: int) -> int:
        if self._opcode is None:
            return self._start(mosi)
        op = self._opcode
        if op == Command.RDSR:
            return self.status
        if self._address_left:
            self._address = (self._address << 8 | mosi) & 0xFFFFFF
            self._address_left -= 1
            if not self._address_left:
                self._address %= self.size
                self._cursor = self._address
            return 0xFF
        if op == Command.READ:
            value = self.data[self._cursor]
            self._cursor = (self._cursor + 1) % self.size
            return value
        if op == Command.WRITE:
            page = self._cursor - self._cursor % self.page_size
            self._pending[self._cursor] = mosi
            self._cursor = page + (self._cursor + 1 - page) % self.page_size
            return 0xFF
        if op == Command.WRSR:
            self._status = (self._status & ~SR_BP) | (mosi & SR_BP)
            self._opcode = -1  # one data byte only
        return 0xFF

    def _start(self, opcode: int) -> int:
        high_address = 0
        base = opcode
        if self.address_bytes == 1 and self.size > 256 and opcode & ~0x08 in (
                Command.READ, Command.WRITE):
            base = opcode & ~0x08
            high_address = 1 if opcode & 0x08 else 0
        if self.busy and base != Command.RDSR:
            self._opcode = -1  # ignored until the write cycle ends
            return 0xFF
        self._opcode = base
        if base == Command.WREN:
            self._status |= SR_WEL
        elif base == Command.WRDI:
            self._status &= ~SR_WEL
        elif base in (Command.READ, Command.WRITE):
            self._address = high_address
            self._address_left = self.address_bytes
        elif base not in (Command.RDSR, Command.WRSR):
            self._opcode = -1  # unknown opcode: the part ignores the rest
        return 0xFF

    def release(self) -> None:
        if self._opcode == Command.WRITE and self._pending and not self._address_left \
                and self._status & SR_WEL:
            for address, value in self._pending.items():
                self.data[address] = value
            self.writes += 1
            self._status &= ~SR_WEL
            self._busy_until = self.clock.now() + self.write_cycle
        elif self._opcode == Command.WRSR and self._status & SR_WEL:
            self._status &= ~SR_WEL
        self._reset_command()


class OcteonSpi(DeviceModel):
    """The MPI model. Host side: :attr:`targets` (chip select -> :class:`SpiTarget`),
    :attr:`transfers` counts ``MPI_TX`` writes."""

    kind = "octeon-spi"
    reg_width = 8
    size = 0x100
    side_effect_ranges = ((Reg.TX, 8),)  # a write shifts bytes and moves chip select
    storage_offsets = frozenset({Reg.CFG, *(Reg.DAT0 + 8 * i for i in range(DATA_BYTES))})

    def __init__(self, clock: ModelClock, targets: dict[int, SpiTarget] | None = None) -> None:
        super().__init__(clock)
        for cs in targets or {}:
            if not 0 <= cs < CHIP_SELECTS:
                raise ValueError(f"chip select {cs}: the MPI has {CHIP_SELECTS}")
        self.targets: dict[int, SpiTarget] = dict(targets or {})
        self.transfers = 0
        self.cfg = 0
        self.tx = 0
        self.rxnum = 0
        self.data = [0] * DATA_BYTES
        self._held: int | None = None
        self._build_tables()

    def _build_tables(self) -> None:
        self.peekers = {Reg.CFG: lambda: self.cfg, Reg.STS: lambda: self.rxnum << 8,
                        Reg.TX: lambda: self.tx}
        self.writers = {Reg.CFG: self._write_cfg, Reg.TX: self._write_tx}
        for i in range(DATA_BYTES):
            self.peekers[Reg.DAT0 + 8 * i] = partial(self._peek_data, i)
            self.writers[Reg.DAT0 + 8 * i] = partial(self._write_data, i)

    def snapshot(self) -> dict[str, Any]:
        """The controller's registers and each chip select's device."""
        state = super().snapshot()
        state["targets"] = {cs: target.snapshot() for cs, target in self.targets.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """The devices on the chip selects are the ones firmware put there again (the same
        board); each takes its own state back."""
        state = dict(state)
        for cs, target_state in state.pop("targets", {}).items():
            if cs in self.targets:
                self.targets[cs].restore(target_state)
        super().restore(state)

    def _peek_data(self, index: int) -> int:
        return self.data[index]

    def _write_data(self, index: int, value: int, mask: int) -> None:
        self.data[index] = merge(self.data[index], value, mask) & 0xFF

    def _write_cfg(self, value: int, mask: int) -> None:
        self.cfg = merge(self.cfg, value, mask) & ((1 << 29) - 1)
        if not self.cfg & 1 and self._held is not None:
            self._release(self._held)   # a disabled interface drives no chip select

    def _write_tx(self, value: int, mask: int) -> None:
        self.tx = merge(self.tx, value, mask) & _MASK64
        if mask & 0xFF_FFFF != 0xFF_FFFF:
            return  # a partial write of MPI_TX starts nothing until its low bytes land
        tx = self.tx
        total = tx & TX_TOTNUM
        sent = tx >> TX_TXNUM_SHIFT & 0x1F
        cs = tx >> TX_CSID_SHIFT & 0x3
        self.transfers += 1
        if self._held is not None and self._held != cs:
            self._release(self._held)
        target = self.targets.get(cs)
        if self._held != cs:
            self._held = cs
            if target is not None:
                target.select()
        exchange: Callable[[int], int] = target.exchange if target is not None \
            else _floating
        for i in range(total):
            stored = i < DATA_BYTES
            mosi = self.data[i] if stored and i < sent else 0
            miso = exchange(mosi) & 0xFF
            if stored:
                self.data[i] = miso
        self.rxnum = min(total, DATA_BYTES)
        if not tx & TX_LEAVECS:
            self._release(cs)

    def _release(self, cs: int) -> None:
        self._held = None
        target = self.targets.get(cs)
        if target is not None:
            target.release()


def _floating(_mosi: int) -> int:
    """No device on the chip select: MISO floats high (pulled up)."""
    return 0xFF


__all__ = ["Command", "OcteonSpi", "Reg", "SpiEeprom", "SpiTarget"]
