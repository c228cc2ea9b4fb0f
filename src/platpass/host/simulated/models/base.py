"""What every register-level model shares: access splitting, interrupt lines, timers.

A model is pure device logic over a :class:`~platpass.host.simulated.clock.ModelClock`: it
knows its registers (``read_reg``/``write_reg`` with side effects, ``peek_reg`` without),
its interrupt line levels and its host-side inputs and outputs. It knows nothing of memfds
or listeners; :class:`~platpass.host.simulated.backend.SimulatedBackend` wraps every model
step (a register access, a timer callback, a host-side input) so that it can reconcile the
memory mirror before the step and publish registers and line changes after it.

Register accesses arrive at any width the VFIO layer allows (1/2/4/8 bytes, naturally
aligned). They are split here into per-register pieces with a byte-lane ``mask``, so a
16-bit read of the upper half of a data register does not pop a FIFO (Linux's amba-pl011
uses 16-bit accesses; an 8250 with ``reg-io-width = <4>`` uses 32-bit ones).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum
from functools import partial
from typing import Any, ClassVar, TypeVar

from platpass.host.simulated.clock import Cancellable, ModelClock

T = TypeVar("T")
StepRunner = Callable[[Callable[[], T]], T]

#: PrimeCell identification: PCellID0-3 are the same for every ARM PrimeCell.
PCELL_ID = (0x0D, 0xF0, 0x05, 0xB1)


def primecell_id_registers(periph_id: tuple[int, int, int, int]) -> dict[int, int]:
    """PeriphID0-3 at 0xFE0-0xFEC and PCellID0-3 at 0xFF0-0xFFC (one byte per word)."""
    regs = {0xFE0 + 4 * i: value for i, value in enumerate(periph_id)}
    regs.update({0xFF0 + 4 * i: value for i, value in enumerate(PCELL_ID)})
    return regs


class _ModelTimer:
    """A model's handle on a clock timer, hashable by identity so the model can track it."""

    __slots__ = ("inner",)

    def __init__(self) -> None:
        self.inner: Cancellable | None = None

    def cancel(self) -> None:
        if self.inner is not None:
            self.inner.cancel()


def _run_directly(step: Callable[[], T]) -> T:
    return step()


_PLAIN_SCALARS = (int, float, str, bytes, bytearray, type(None), Enum)


def is_plain(value: object) -> bool:
    """Data a snapshot can hold: numbers, strings, bytes, enum members, and lists,
    tuples, deques, sets and dicts of those (no callables, clocks, timers, objects)."""
    if isinstance(value, _PLAIN_SCALARS):
        return True
    if isinstance(value, list | tuple | deque | set | frozenset):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(is_plain(k) and is_plain(v) for k, v in value.items())
    return False


def plain_state(obj: object, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """``obj``'s attributes that are plain data (:func:`is_plain`), copied, but ``skip``."""
    import copy

    return {name: copy.deepcopy(value) for name, value in vars(obj).items()
            if name not in skip and is_plain(value)}


class DeviceModel:
    """Base of every model. Subclasses fill the class attributes and the register tables
    (:attr:`peekers`, :attr:`readers`, :attr:`writers`, :attr:`constants`); everything the
    outside world does to the model goes through :meth:`run_step`.
    """

    #: Short model name, e.g. ``"pl011"`` (used for memfd names).
    kind: ClassVar[str]
    #: Bytes per register lane: 4 for the ARM PrimeCells, 1 or 4 for an 8250.
    reg_width: int = 4
    #: Bytes of register space the model decodes.
    size: int = 0x1000
    #: ``(offset, size)`` ranges whose accesses need the model: registers whose effect
    #: depends on each access (data/FIFO registers, clear-on-read, masked addressing,
    #: registers that must move lines or counters at once). A memory mapping can never
    #: stand in for these.
    side_effect_ranges: tuple[tuple[int, int], ...] = ()
    #: Registers whose writes through a memory mapping the backend takes over at the next
    #: event boundary, as one full-width register write (before that boundary's step):
    #: plain storage, and writes whose effect can be read off the value they leave in the
    #: memfd (the PL031's load and write-1-to-clear registers). They must be mirrored
    #: (have a peeker), or the backend cannot tell that they were written.
    storage_offsets: frozenset[int] = frozenset()
    #: Attributes that hold no device state (host-side logs of what the device did, such
    #: as a UART's transmitted bytes): left out of :meth:`snapshot`.
    not_state: ClassVar[frozenset[str]] = frozenset()
    #: Interrupt lines, and which of them are level-sensitive (all of these IPs drive
    #: level outputs).
    irq_count: int = 1
    line_is_level: tuple[bool, ...] = (True,)

    def __init__(self, clock: ModelClock) -> None:
        self.clock = clock
        self._runner: StepRunner[Any] = _run_directly
        self._lines = [False] * self.irq_count
        self._rises = [0] * self.irq_count
        self._timers: set[_ModelTimer] = set()
        self._closed = False
        #: Register tables, filled by subclasses. Dispatch through dicts rather than
        #: ``match`` keeps a trapped access cheap (a few microseconds).
        #: Side-effect-free readers: the value a read returns now (the mirror's view).
        self.peekers: dict[int, Callable[[], int]] = {}
        #: Readers with side effects (FIFO pops, clear-on-read), given the lane mask.
        self.readers: dict[int, Callable[[int], int]] = {}
        #: Writers, given the value and the lane mask.
        self.writers: dict[int, Callable[[int, int], None]] = {}
        #: Registers that never change (identification registers).
        self.constants: dict[int, int] = {}

    # -- the step machinery ------------------------------------------------------------

    def attach_runner(self, runner: StepRunner[Any]) -> None:
        """Route every step through ``runner`` (the backend's reconcile/mirror wrapper)."""
        self._runner = runner

    def run_step(self, step: Callable[[], T]) -> T:
        """Run one model step (host handles and timers come through here)."""
        result: T = self._runner(step)
        return result

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Schedule a model step; the handle is forgotten when the model is closed."""
        timer = _ModelTimer()

        def fire() -> None:
            self._timers.discard(timer)
            if not self._closed:
                self.run_step(callback)

        timer.inner = self.clock.call_later(delay, fire)
        self._timers.add(timer)
        return timer

    def cancel(self, handle: Cancellable | None) -> None:
        """Cancel a timer made by :meth:`call_later` (None is ignored)."""
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    def close(self) -> None:
        """Stop every timer: a closed model no longer moves."""
        self._closed = True
        for handle in list(self._timers):
            handle.cancel()
        self._timers.clear()

    @property
    def live_timers(self) -> int:
        """How many timers the model holds (a quiet model holds few; none poll)."""
        return len(self._timers)

    # -- state that outlives the process -----------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The device's state as plain data (:func:`is_plain`): every plain attribute but
        :attr:`not_state` and the register tables. What a restarted ``serve --workers``
        worker gives :meth:`restore` so that a device keeps its state across the worker's
        death as it does across a client's disconnect."""
        return plain_state(self, self.not_state | _NOT_MODEL_STATE)

    def restore(self, state: dict[str, Any]) -> None:
        """Take a :meth:`snapshot` of a model of the same kind and configuration back, then
        :meth:`resume` what the state implies (timers)."""
        for name, value in state.items():
            if is_plain(getattr(self, name, None)):  # never a live timer or a callback
                setattr(self, name, value)
        self.resume()

    def resume(self) -> None:
        """Re-arm the timers a restored state implies (a running counter's next event, a
        character on the wire). Models with timers override it."""

    # -- interrupt lines ---------------------------------------------------------------

    def set_line(self, index: int, level: bool) -> None:
        """Drive interrupt output ``index``; rising edges are counted for the backend."""
        if level and not self._lines[index]:
            self._rises[index] += 1
        self._lines[index] = level

    def line(self, index: int) -> bool:
        """Current level of interrupt output ``index``."""
        return self._lines[index]

    def take_rises(self, index: int) -> int:
        """Rising edges of line ``index`` since the last call."""
        rises, self._rises[index] = self._rises[index], 0
        return rises

    # -- register access ---------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read of ``size`` bytes at ``offset`` (little-endian), with side effects."""
        width = self.reg_width
        if size == width and offset % width == 0:
            return self.read_reg(offset, (1 << (8 * width)) - 1)
        result = 0
        for base, lane, nbytes, pos in self._pieces(offset, size):
            mask = ((1 << (8 * nbytes)) - 1) << (8 * lane)
            value = self.read_reg(base, mask) & mask
            result |= (value >> (8 * lane)) << (8 * pos)
        return result

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write of ``size`` bytes at ``offset``."""
        width = self.reg_width
        if size == width and offset % width == 0:
            full = (1 << (8 * width)) - 1
            self.write_reg(offset, value & full, full)
            return
        for base, lane, nbytes, pos in self._pieces(offset, size):
            piece = (value >> (8 * pos)) & ((1 << (8 * nbytes)) - 1)
            mask = ((1 << (8 * nbytes)) - 1) << (8 * lane)
            self.write_reg(base, piece << (8 * lane), mask)

    def _pieces(self, offset: int, size: int) -> list[tuple[int, int, int, int]]:
        """Split an access into (register offset, first lane, bytes, position in value)."""
        width = self.reg_width
        pieces = []
        pos = offset
        end = offset + size
        while pos < end:
            base = pos - pos % width
            lane = pos - base
            nbytes = min(end - base, width) - lane
            pieces.append((base, lane, nbytes, pos - offset))
            pos += nbytes
        return pieces

    def read_has_side_effects(self, offset: int, size: int) -> bool:
        """True when reading ``[offset, offset+size)`` can change the model's state."""
        readers = self.readers
        if not readers:
            return False
        width = self.reg_width
        if size == width and not offset % width:
            return offset in readers
        first = offset - offset % width
        return any(reg in readers for reg in range(first, offset + size, width))

    def quiet_read(self, offset: int, size: int) -> Callable[[], int]:
        """What :meth:`read` of ``size`` bytes at ``offset`` does, as a callable, for an
        access :meth:`read_has_side_effects` says is free of them (the backend keeps it to
        repeat the access): the register's peeker itself when the access is one whole
        register and this model reads registers the base way, else :meth:`read` bound to
        the access. Models build their tables once, so the peeker found now is the one a
        later read would find."""
        cls = type(self)
        width = self.reg_width
        plain = (cls.read is DeviceModel.read and cls.read_reg is DeviceModel.read_reg
                 and cls.peek_reg is DeviceModel.peek_reg)
        if plain and size == width and not offset % width and offset not in self.readers:
            peek = self.peekers.get(offset)
            if peek is not None:
                return peek
            constant = self.constants.get(offset, 0)  # fixed for the model's life
            return partial(int, constant)
        return partial(self.read, offset, size)

    def read_reg(self, offset: int, mask: int) -> int:
        """Read the register at ``offset`` (``mask``: the lanes the access covers)."""
        reader = self.readers.get(offset)
        if reader is not None:
            return reader(mask)
        return self.peek_reg(offset)

    def write_reg(self, offset: int, value: int, mask: int) -> None:
        """Write the lanes of ``mask`` of the register at ``offset``."""
        writer = self.writers.get(offset)
        if writer is not None:
            writer(value, mask)
            self.after_write()

    def after_write(self) -> None:
        """Called after every register write (models recompute their outputs here)."""

    def peek_reg(self, offset: int) -> int:
        """The value a read would return now, without any side effect (the mirror's view)."""
        peek = self.peekers.get(offset)
        if peek is not None:
            return peek()
        return self.constants.get(offset, 0)

    # -- the memory mirror ---------------------------------------------------------------

    @property
    def mirror_offsets(self) -> tuple[int, ...]:
        """Registers whose value can change, mirrored into the memfd after every step
        (:attr:`constants` are written once; reserved space reads as zero)."""
        return tuple(self.peekers)

    def mirror_values(self) -> list[int]:
        """Current read values of :attr:`mirror_offsets`, in order."""
        return [peek() for peek in self.peekers.values()]


#: The base class's own machinery: never part of a snapshot.
_NOT_MODEL_STATE = frozenset({"_closed", "_rises", "_timers", "peekers", "readers",
                              "writers", "constants"})


def merge(old: int, value: int, mask: int) -> int:
    """A sub-register write to a storage register: the lanes of ``mask`` take ``value``."""
    return (old & ~mask) | (value & mask)
