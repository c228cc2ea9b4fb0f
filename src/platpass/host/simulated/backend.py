"""A host backend over a register-level model: registers in a memfd, lines from the model.

Mapped versus trapped in simulation
-----------------------------------
A real device's registers have their side effects in hardware, so a page of them can be
mapped into a guest. A memfd has none, so each model declares ``side_effect_ranges`` (FIFO
data registers, clear-on-read registers, masked addressing: registers whose effect depends
on *each* access, which no later look at the memory can recover). They are reported in
:attr:`BackendRegion.side_effect_ranges <platpass.host.backend.BackendRegion>`, and the
VFIO layer never maps a page that holds one: accesses there come to :meth:`read`/:meth:`write`.

The memfd is a live mirror: after every model step each register's current read value is
written into it, so a client that maps it reads real values (the PL031 counter moves
there once a second). Writes through a mapping to the model's ``storage_offsets`` land in
the memfd; the backend takes them over at the next *event boundary* - any trapped access,
an unmask, a timer or a host-side input - as one full-width register write each, *before*
the step of that boundary runs. A storage register need not be plain storage: the PL031's
``RTCLR`` (a new value loads the counter) and ``RTCICR`` (write-1-to-clear; mirrored as 0,
so any set bit is a write) are taken over the same way, which is why its page has no
side-effect range at all. Writes through a mapping to read-only registers and reserved
space are undone at the boundary. Until then the mapping shows what was written, which is
the one way the simulation differs from silicon (each model documents what that means for
it).

The take-over compares the mirrored words with what the backend last published; only when
the page differs from that shadow (one 4 KiB comparison) is anything done, and then only
the words that differ are rewritten, so a guest writing another word of the page at the
same moment keeps its write.

Only pages a client can map are watched
---------------------------------------
That comparison runs at every event boundary, so it is on the hot path of every trapped
access. It is paid only for the pages the VFIO layer may offer for mapping: host pages wholly
inside the region that hold no byte of a side-effect range (:func:`mappable_pages`, the same
rule the VFIO layer applies, minus driver traps, which only ever take pages away). A device
whose every page carries a side-effect range (the PL011, PL061, SP805 and 16550 on their one
page) compares nothing: no client is given the memfd for those pages, so nothing can store
there, and a store made anyway (by someone mapping the memfd on their own) is neither taken
over nor undone. The comparison itself is ``bytearray == memoryview`` over a view held open
on the mapping, a ``memcmp`` without copying the page first (``mmap[a:b]`` would allocate and
copy 4 KiB per access). :attr:`SimulatedBackend.page_checks` counts the comparisons.

Interrupts
----------
The model drives line levels. A level line is reported to the listener once when it is
asserted while unmasked; after :meth:`unmask_irq` a still-asserted level line is reported
again at once (the GIC/UIO behaviour VFIO relies on). An edge line is reported on every
rising edge; edges that arrive while masked are remembered and reported once on unmask
(as Linux's lazy ``disable_irq`` replays them).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from platpass.errors import HostError
from platpass.host.backend import BackendRegion, IrqListener, MapSource
from platpass.host.simulated.models.base import DeviceModel
from platpass.reactor import Reactor

T = TypeVar("T")
PAGE_SIZE = mmap.PAGESIZE
_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
#: Side-effect-free accesses a backend remembers (see SimulatedBackend.read).
_MAX_QUIET_READS = 1024


def page_round_up(size: int) -> int:
    """``size`` rounded up to whole pages (the memfd must cover whole pages to be mapped)."""
    return (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def mappable_pages(size: int, side_effect_ranges: tuple[tuple[int, int], ...],
                   page: int = PAGE_SIZE) -> tuple[tuple[int, int], ...]:
    """The ``(offset, length)`` runs of whole ``page``-sized pages inside a ``size``-byte
    region that hold no byte of a side-effect range: the only pages a client can be handed
    for mapping, hence the only ones whose stores the backend must look for.

    A superset of what the VFIO layer maps (it maps in granules of at least a host page and
    also keeps pages with driver traps back), never a subset: a page it could offer is
    always watched.
    """
    pages = size // page
    free = [True] * pages
    for offset, length in side_effect_ranges:
        if length <= 0:
            continue
        for index in range(offset // page, (offset + length - 1) // page + 1):
            if 0 <= index < pages:
                free[index] = False
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for index in range(pages + 1):
        if index < pages and free[index]:
            if start is None:
                start = index
        elif start is not None:
            runs.append((start * page, (index - start) * page))
            start = None
    return tuple(runs)


class SimulatedBackend:
    """:class:`platpass.host.backend.Backend` over one :class:`DeviceModel`.

    ``region_size`` is the size firmware gives the region (``reg``); the model decodes its
    own register span inside it and the rest reads as zero. Not thread-safe: like the
    reactor, it is driven from one thread.
    """

    def __init__(self, model: DeviceModel, region_size: int | None = None, *,
                 memfd: int | None = None) -> None:
        size = model.size if region_size is None else region_size
        if size <= 0:
            raise HostError(f"simulated {model.kind}: region size {size} is not positive")
        self.model = model
        self._size = size
        self._map_size = page_round_up(size)
        self._fd = os.memfd_create(f"platpass-sim-{model.kind}", os.MFD_CLOEXEC) \
            if memfd is None else memfd
        try:
            held = os.fstat(self._fd).st_size
            #: False when ``memfd`` already held a mirror (a previous process's, with what
            #: a guest wrote through its mapping since): its mappable pages are kept for
            #: the first event boundary to take over, not overwritten.
            self._fresh_memory = held == 0
            if self._fresh_memory:
                os.ftruncate(self._fd, self._map_size)
            elif held != self._map_size:
                raise OSError(f"it holds {held} bytes, not {self._map_size}")
            self._mm: mmap.mmap | None = mmap.mmap(self._fd, self._map_size)
        except OSError as err:
            os.close(self._fd)
            raise HostError(f"simulated {model.kind}: cannot set up memfd: {err}") from err
        ranges = tuple(
            (int(offset), int(min(length, size - offset)))
            for offset, length in model.side_effect_ranges
            if offset < size
        )
        self._regions = (BackendRegion(size, MapSource(self._fd, 0), ranges),)
        self._fmt = _FORMATS[model.reg_width]
        # The mirror covers the model's registers in the memfd's pages; the VFIO layer only
        # ever maps pages wholly inside the region, so nothing beyond it leaks.
        self._offsets = tuple(model.mirror_offsets)
        if any(o + model.reg_width > self._map_size for o in self._offsets):
            raise HostError(f"simulated {model.kind}: registers beyond the memfd")
        self._storage = {o for o in model.storage_offsets if o + model.reg_width <= size}
        self._span = self._map_size
        self._shadow = bytearray(self._span)
        for offset, value in model.constants.items():
            if offset + model.reg_width <= self._span:
                struct.pack_into(self._fmt, self._shadow, offset, value)
        self._last: list[int] = [0] * len(self._offsets)
        # What a client may map (see "Only pages a client can map are watched"): views on
        # the mapping held open for a copy-free comparison, released in close().
        self._mappable = mappable_pages(size, ranges)
        self._view = memoryview(self._mm)
        self._watch = tuple((start, self._view[start:start + length])
                            for start, length in self._mappable)
        self._whole = self._watch[0][1] if self._mappable == ((0, self._span),) else None
        self._watched_storage = tuple(
            (index, offset) for index, offset in enumerate(self._offsets)
            if offset in self._storage
            and any(start <= offset < start + length for start, length in self._mappable)
        )
        self._page_checks = 0
        self._listener: IrqListener | None = None
        count = model.irq_count
        self._masked = [False] * count
        self._reported = [False] * count
        self._edge_pending = [False] * count
        self._in_step = False
        #: (region, offset, size) -> the model read of a valid, side-effect-free access
        #: (see :meth:`read`).
        self._quiet_reads: dict[tuple[int, int, int], Callable[[], int]] = {}
        self._delivering = False
        self._redeliver = False
        self._closed = False
        #: Called after every model step (a trapped write or side-effect read, a timer, a
        #: host-side input, an unmask boundary): the device's state may have changed
        #: (``serve --workers`` saves it then, see :meth:`snapshot`).
        self.on_step: Callable[[], None] | None = None
        model.attach_runner(self._run_step)
        self._publish(force=True, keep_mapped=not self._fresh_memory)

    # -- Backend protocol -----------------------------------------------------------------

    @property
    def regions(self) -> tuple[BackendRegion, ...]:
        return self._regions

    @property
    def irq_count(self) -> int:
        return self.model.irq_count

    @property
    def irq_is_level(self) -> tuple[bool, ...]:
        """Which lines the model drives as levels (all of the shipped models do)."""
        return self.model.line_is_level

    def read(self, region: int, offset: int, size: int) -> int:
        quiet = self._quiet_reads.get((region, offset, size))
        if (quiet is not None and not self._in_step and not self._closed
                and not (self._watch and self._mapped_differs())):
            return quiet()  # what the checks below found the first time, still true
        self._check(region, offset, size)
        model = self.model
        if offset >= model.size:
            return 0
        if (not model.read_has_side_effects(offset, size) and not self._in_step
                and not self._closed and not self._mapped_differs()):
            # A read without side effects changes no state: nothing to publish, no line
            # can move. Still an event boundary, but with no mapped writes to take over.
            # Whether a register has side effects is fixed by the model (its readers), so
            # the access is remembered as quiet (bounded: a device has few registers).
            if len(self._quiet_reads) < _MAX_QUIET_READS:
                self._quiet_reads[(region, offset, size)] = model.quiet_read(offset, size)
            return model.read(offset, size)
        return self._run_step(lambda: model.read(offset, size))

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self._check(region, offset, size)
        if offset >= self.model.size:
            return
        self._run_step(lambda: self.model.write(offset, size, value))

    def attach(self, reactor: Reactor, listener: IrqListener) -> None:
        self._listener = listener
        self._deliver()

    def detach(self) -> None:
        """Stop reporting interrupts (the device keeps its state)."""
        self._listener = None

    def mask_irq(self, index: int) -> None:
        self._check_irq(index)
        self._masked[index] = True

    def unmask_irq(self, index: int) -> None:
        self._check_irq(index)
        self._masked[index] = False
        self._reported[index] = False
        # An unmask is an event boundary: writes through a mapping are taken over first.
        # With none pending the model state cannot have changed: only report the line.
        if self._in_step or self._closed or self._mapped_differs():
            self._run_step(lambda: None)
        else:
            self._deliver()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.model.close()
        self._listener = None
        for _, view in self._watch:
            view.release()
        self._view.release()
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        os.close(self._fd)

    # -- state that outlives the process -----------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The model's state (:meth:`DeviceModel.snapshot`), with mapped writes not yet
        taken over applied first, so that the snapshot holds what the guest last wrote.
        Taking it is not a change: :attr:`on_step` is not called."""
        hook, self.on_step = self.on_step, None
        try:
            return self._run_step(self.model.snapshot)
        finally:
            self.on_step = hook

    def restore(self, state: dict[str, Any]) -> None:
        """Take a :meth:`snapshot` back (a model of the same kind, from the same node), before
        any access: the mirror is republished (but for the mappable pages of a memfd a
        previous process left, whose guest writes the next event boundary takes over) and
        the lines are reported as the restored state drives them."""
        if self._closed or self._in_step:
            raise HostError(f"simulated {self.model.kind}: restore needs an idle backend")
        self._in_step = True
        try:
            self.model.restore(state)
            self._publish(force=True, keep_mapped=not self._fresh_memory)
        finally:
            self._in_step = False
        self._deliver()

    # -- observation helpers (tests, demo) ---------------------------------------------

    @property
    def memfd(self) -> int:
        """The memfd holding the register mirror (the region's map source)."""
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    @property
    def mappable_pages(self) -> tuple[tuple[int, int], ...]:
        """The ``(offset, length)`` runs of the region whose mapped stores are looked for
        at event boundaries (empty: no page of this device can be mapped)."""
        return self._mappable

    @property
    def page_checks(self) -> int:
        """How many times an event boundary compared the mappable pages with what was last
        published (stays 0 for a device none of whose pages can be mapped)."""
        return self._page_checks

    def masked(self, index: int) -> bool:
        """True while line ``index`` is masked at the source."""
        self._check_irq(index)
        return self._masked[index]

    def line(self, index: int) -> bool:
        """Level of the model's interrupt output ``index``."""
        self._check_irq(index)
        return self.model.line(index)

    # -- the step wrapper -----------------------------------------------------------------

    def _run_step(self, step: Callable[[], T]) -> T:
        if self._closed:
            raise HostError(f"simulated {self.model.kind}: backend is closed")
        if self._in_step:  # a step started from inside a step: one boundary covers both
            return step()
        self._in_step = True
        try:
            restore = self._reconcile()
            result = step()
            self._publish()
            if restore:
                self._restore()
        finally:
            self._in_step = False
        self._deliver()
        if self.on_step is not None:
            self.on_step()
        return result

    @property
    def mapped_writes_pending(self) -> bool:
        """True when something wrote a mappable page of the memfd since the last step."""
        return self._mm is None or self._mapped_differs()

    def _mapped_differs(self) -> bool:
        """Whether a mappable page differs from the shadow: one ``memcmp`` per run of pages,
        over the views held on the mapping (no copy); nothing at all without such pages."""
        watch = self._watch
        if not watch:
            return False
        self._page_checks += 1
        shadow = self._shadow
        if self._whole is not None:
            return shadow != self._whole
        return not all(shadow.startswith(view, start) for start, view in watch)

    def _reconcile(self) -> bool:
        """Take over writes made through a mapping (before the boundary's step runs).

        A mirrored storage register whose memfd word differs from what was last published
        is written to the model with that value, and the value is adopted as published (the
        memfd already holds it; it is rewritten only if the model reads back something
        else, e.g. ``RTCICR`` going back to 0). Returns True when the page differed from
        the shadow at all, so that :meth:`_restore` undoes the writes nobody took over.
        """
        mm = self._mm
        assert mm is not None
        if not self._mapped_differs():
            return False
        unpack = struct.unpack_from
        pack = struct.pack_into
        fmt = self._fmt
        last = self._last
        full = (1 << (8 * self.model.reg_width)) - 1
        taken: list[tuple[int, int]] = []
        for index, offset in self._watched_storage:
            (current,) = unpack(fmt, mm, offset)
            if current != last[index]:
                last[index] = current
                pack(fmt, self._shadow, offset, current)
                taken.append((offset, current))
        for offset, value in taken:  # in offset order, after every value has been read
            self.model.write_reg(offset, value, full)
        return True

    def _publish(self, *, force: bool = False, keep_mapped: bool = False) -> None:
        """Write every mirrored register whose read value changed into the memfd (and the
        shadow); ``force`` rewrites the whole page from the shadow (start-up), but for the
        mappable pages when ``keep_mapped`` (they hold writes a guest made through a
        mapping, which the next event boundary takes over)."""
        mm = self._mm
        assert mm is not None
        values = self.model.mirror_values()
        last = self._last
        if values != last:
            pack = struct.pack_into
            fmt = self._fmt
            shadow = self._shadow
            for index, value in enumerate(values):
                if value != last[index]:
                    last[index] = value
                    pack(fmt, shadow, self._offsets[index], value)
                    if not force:
                        pack(fmt, mm, self._offsets[index], value)
        if force:
            if not keep_mapped:
                mm[: self._span] = self._shadow
                return
            start = 0
            for first, length in (*self._mappable, (self._span, 0)):
                mm[start:first] = self._shadow[start:first]
                start = first + length

    def _restore(self) -> None:
        """Undo mapped writes nobody took over (read-only registers, reserved space),
        rewriting only the register-sized words that differ from the shadow.

        A storage register that differs here was written by the guest after
        :meth:`_reconcile` read it (the vCPU runs while we do): it is left for the next
        boundary to take over, never overwritten with the older value.
        """
        mm = self._mm
        assert mm is not None
        shadow = self._shadow
        if not self._mapped_differs():
            return
        width = self.model.reg_width
        storage = self._storage
        chunk = 64
        for start in (s for first, length in self._mappable
                      for s in range(first, first + length, chunk)):
            end = start + chunk
            if mm[start:end] == shadow[start:end]:
                continue
            for word in range(start, end, width):
                if word not in storage and mm[word:word + width] != shadow[word:word + width]:
                    mm[word:word + width] = shadow[word:word + width]

    def _deliver(self) -> None:
        """Report line events to the listener; safe against re-entry from the listener."""
        if self._delivering:
            self._redeliver = True
            return
        self._delivering = True
        try:
            while True:
                self._redeliver = False
                self._deliver_once()
                if not self._redeliver:
                    break
        finally:
            self._delivering = False

    def _deliver_once(self) -> None:
        model = self.model
        for index in range(model.irq_count):
            rises = model.take_rises(index)
            if model.line_is_level[index]:
                if not model.line(index):
                    self._reported[index] = False
                    continue
                if rises:
                    self._reported[index] = False
                if self._reported[index] or self._masked[index] or self._listener is None:
                    continue
                self._reported[index] = True
                self._listener.irq_fired(index)
            else:
                if rises:
                    self._edge_pending[index] = True
                if not self._edge_pending[index] or self._masked[index]:
                    continue
                if self._listener is None:
                    self._edge_pending[index] = False
                    continue
                self._edge_pending[index] = False
                self._listener.irq_fired(index)

    def _check(self, region: int, offset: int, size: int) -> None:
        if self._closed:
            raise HostError(f"simulated {self.model.kind}: backend is closed")
        if region != 0:
            raise HostError(f"simulated {self.model.kind}: no region {region}")
        if size not in (1, 2, 4, 8) or offset % size or offset < 0 or offset + size > self._size:
            raise HostError(
                f"simulated {self.model.kind}: bad access of {size} bytes at {offset:#x}"
            )

    def _check_irq(self, index: int) -> None:
        if not 0 <= index < self.model.irq_count:
            raise HostError(f"simulated {self.model.kind}: no interrupt line {index}")
