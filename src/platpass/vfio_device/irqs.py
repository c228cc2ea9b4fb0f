"""VFIO interrupt semantics: ``VFIO_DEVICE_SET_IRQS`` and the automasked level rule.

One :class:`IrqLine` per IRQ index (platform devices have one interrupt per index, count 1).
The behaviour follows ``linux/vfio.h`` and Linux's vfio-platform
(``drivers/vfio/platform/vfio_platform_irq.c``), with the differences listed at the end.

The line at the source (the backend) is enabled only while a trigger eventfd is set and
VFIO has not masked it, the way vfio-platform requests the host IRQ only with a trigger
and leaves it disabled while masked.

Level lines (``AUTOMASKED``): when the line fires, VFIO masks it (backend
``mask_irq``) and signals the trigger eventfd once. It stays masked until UNMASK (an
``ACTION_UNMASK`` call, or a write to the UNMASK eventfd — the KVM irqfd resampler). On
UNMASK the backend re-enables the line; if the device still asserts it, it fires again at
once. A level interrupt is therefore never lost, and never signalled twice for one assertion.

Edge lines are never automasked. They may be masked by the user: Linux's ``disable_irq``
on an edge line is lazy — an edge that arrives while disabled is recorded (IRQS_PENDING)
and the line is masked at the chip; ``enable_irq`` replays one recorded edge. platpass
does the same: MASK only sets a flag; an edge while masked is latched (several edges
collapse into one) and the backend line is masked; UNMASK re-enables it and delivers the
latched edge. A backend that also latches edges while masked (the simulated one does)
may report one more on UNMASK: two or more edges while masked can then give two signals,
never one without an edge.

Loopback (``ACTION_TRIGGER`` with DATA_NONE, or DATA_BOOL true) runs the same handler as a
real line event: a level line that is not masked is masked and signalled, a masked one is
left alone (the automasked handler's IRQ_NONE case); an edge is signalled, or latched if
masked. ``vfio.h`` allows loopback only "once a signaling mechanism is set", so without a
trigger eventfd it is refused with EINVAL (as vfio-pci does for INTx).

Differences from vfio-platform, on purpose:

* Every line is MASKABLE (vfio-platform makes edge lines non-maskable); the semantics
  above are what masking an edge means in Linux's IRQ core.
* A call is validated completely (flags, index, start/count, data, every fd) before
  anything changes; vfio-platform tears the old trigger down before it looks at the new
  fd. A bad fd is EBADF, an fd that is not an eventfd EINVAL.
* Lines of unknown trigger type are treated as level: automasking an edge line only costs
  an UNMASK, whereas treating a level line as an edge would be an interrupt storm.

fds passed in are ``dup()``-ed; the caller keeps (and closes) its own.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from platpass.errors import HostError, VfioError
from platpass.reactor import Reactor
from platpass.vfio_device.uapi import IrqInfoFlags, IrqSetFlags

#: Every platform IRQ index holds exactly one interrupt.
IRQS_PER_INDEX = 1

_NONE = int(IrqSetFlags.DATA_NONE)
_BOOL = int(IrqSetFlags.DATA_BOOL)
_EVENTFD = int(IrqSetFlags.DATA_EVENTFD)
_UNMASK = int(IrqSetFlags.ACTION_UNMASK)
_TRIGGER = int(IrqSetFlags.ACTION_TRIGGER)
_DATA = int(IrqSetFlags.data_mask())
_ACTION = int(IrqSetFlags.action_mask())
_KNOWN = _DATA | _ACTION


class IrqSource(Protocol):
    """The part of a host backend that enables and disables lines at the source."""

    def mask_irq(self, index: int) -> None:
        """Stop line ``index`` from firing."""
        ...

    def unmask_irq(self, index: int) -> None:
        """Re-enable line ``index``; a still-asserted level line fires again."""
        ...


@dataclass(frozen=True, slots=True)
class IrqInfo:
    """``struct vfio_irq_info`` without argsz."""

    index: int
    flags: IrqInfoFlags
    count: int


@dataclass(slots=True)
class IrqStats:
    """Counters for one IRQ index (``VfioDevice.stats``)."""

    #: Line events reported by the backend.
    fired: int = 0
    #: Times the trigger eventfd was signalled.
    delivered: int = 0
    #: Events dropped: no trigger, or a level line already masked (the backend raced).
    spurious: int = 0
    #: Edges latched while masked (replayed once on UNMASK).
    latched: int = 0
    #: Loopback triggers requested through SET_IRQS.
    loopbacks: int = 0
    #: Effective unmasks (a masked line became unmasked).
    unmasks: int = 0


@dataclass(slots=True)
class IrqLine:
    """State of one IRQ index."""

    index: int
    level: bool
    trigger_fd: int | None = None
    unmask_fd: int | None = None
    mask_fd: int | None = None
    masked: bool = False
    #: An edge arrived while masked; delivered on UNMASK.
    pending_edge: bool = False
    #: What the backend was last told: True after unmask_irq, False after mask_irq.
    source_enabled: bool = False
    stats: IrqStats = field(default_factory=IrqStats)

    @property
    def info_flags(self) -> IrqInfoFlags:
        """EVENTFD | MASKABLE, plus AUTOMASKED for level lines."""
        flags = IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE
        return flags | IrqInfoFlags.AUTOMASKED if self.level else flags


@dataclass(frozen=True, slots=True)
class _Request:
    """A validated SET_IRQS call, ready to apply."""

    line: IrqLine
    action: int
    data: int
    count: int
    flag: bool
    fd: int


def _check_eventfd(fd: int) -> None:
    """Raise EBADF for a closed fd, EINVAL for an fd that is not an eventfd."""
    try:
        os.fstat(fd)
    except OSError as err:
        raise VfioError(errno.EBADF, f"fd {fd} is not open") from err
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError as err:
        raise VfioError(errno.EBADF, f"fd {fd} is not open") from err
    if target != "anon_inode:[eventfd]":
        raise VfioError(errno.EINVAL, f"fd {fd} is {target}, not an eventfd")


def _drain(fd: int) -> bool:
    """Read an eventfd's counter if it is non-zero, without ever blocking.

    The fd is shared with the client (dup), so its O_NONBLOCK flag is the client's and is
    not touched here; a zero-timeout poll guards the read instead.
    """
    poller = select.poll()  # not select(): fds past FD_SETSIZE are normal in a server
    poller.register(fd, select.POLLIN)
    if not poller.poll(0):
        return False
    os.eventfd_read(fd)
    return True


class IrqController:
    """SET_IRQS and line events for every IRQ index of one device.

    ``levels[i]`` says whether index ``i`` is a level line. The controller keeps every
    backend line disabled until a trigger is set, so the caller must not enable lines
    behind its back.
    """

    def __init__(self, levels: Sequence[bool], source: IrqSource, reactor: Reactor) -> None:
        self._source = source
        self._reactor = reactor
        self.lines = tuple(IrqLine(i, level) for i, level in enumerate(levels))
        #: Called with (index, "fired" | "delivered" | "masked" | "unmasked") when set
        #: (``platpass serve --trace``); None costs one attribute test per event.
        self.observer: Callable[[int, str], None] | None = None
        for line in self.lines:
            source.mask_irq(line.index)

    @property
    def count(self) -> int:
        """Number of IRQ indexes."""
        return len(self.lines)

    def info(self, index: int) -> IrqInfo:
        """``VFIO_DEVICE_GET_IRQ_INFO``; EINVAL for an unknown index."""
        line = self._line(index)
        return IrqInfo(index, line.info_flags, IRQS_PER_INDEX)

    # -- SET_IRQS ---------------------------------------------------------------------

    def set_irqs(self, index: int, flags: int, start: int, count: int, *,
                 bools: Sequence[bool] = (), fds: Sequence[int] = ()) -> None:
        """``VFIO_DEVICE_SET_IRQS``.

        Raises :class:`VfioError` (EINVAL: flags, index, start/count, data length, loopback
        without trigger, fd not an eventfd; EBADF: fd not open; EMFILE: no fd to dup).
        Nothing changes when it raises.
        """
        request = self._validate(index, flags, start, count, bools, fds)
        self._apply(request)

    def _validate(self, index: int, flags: int, start: int, count: int,
                  bools: Sequence[bool], fds: Sequence[int]) -> _Request:
        # Plain ints on this path: it runs once per interrupt (UNMASK), and IntFlag
        # arithmetic costs microseconds.
        flags = int(flags)
        if flags & ~_KNOWN:
            raise VfioError(errno.EINVAL, f"SET_IRQS flags {flags:#x}: unknown bits")
        data = flags & _DATA
        action = flags & _ACTION
        if not data or data & (data - 1) or not action or action & (action - 1):
            raise VfioError(
                errno.EINVAL, f"SET_IRQS flags {flags:#x}: need one DATA_* and one ACTION_*"
            )
        line = self._line(index)
        if start < 0 or count < 0 or start >= IRQS_PER_INDEX or start + count > IRQS_PER_INDEX:
            raise VfioError(
                errno.EINVAL,
                f"SET_IRQS index {index}: start {start} count {count} outside its "
                f"{IRQS_PER_INDEX} interrupt",
            )
        if count == 0 and not (data == _NONE and action == _TRIGGER):
            raise VfioError(
                errno.EINVAL, "SET_IRQS count 0 is only DATA_NONE|ACTION_TRIGGER (disable)"
            )
        expected_bools = count if data == _BOOL else 0
        expected_fds = count if data == _EVENTFD else 0
        if len(bools) != expected_bools or len(fds) != expected_fds:
            raise VfioError(
                errno.EINVAL,
                f"SET_IRQS {IrqSetFlags(data).name}: {len(bools)} bools and {len(fds)} fds "
                f"for count {count}",
            )
        flag = bool(bools[0]) if bools else data == _NONE
        fd = fds[0] if fds else -1
        if fd >= 0:
            _check_eventfd(fd)
        if (action == _TRIGGER and data != _EVENTFD and count == 1 and flag
                and line.trigger_fd is None):
            raise VfioError(
                errno.EINVAL, f"SET_IRQS index {index}: loopback trigger needs a trigger eventfd"
            )
        return _Request(line, action, data, count, flag, fd)

    def _apply(self, req: _Request) -> None:
        line = req.line
        if req.data == _EVENTFD:
            new_fd = self._dup(req.fd) if req.fd >= 0 else None
            if req.action == _TRIGGER:
                self._set_trigger(line, new_fd)
            elif req.action == _UNMASK:
                self._set_watch(line, "unmask_fd", new_fd, self._on_unmask_fd)
            else:
                self._set_watch(line, "mask_fd", new_fd, self._on_mask_fd)
            return
        if req.action == _TRIGGER:
            if req.count == 0:
                self._set_trigger(line, None)
            elif req.flag:
                line.stats.loopbacks += 1
                self._line_event(line)
        elif req.flag:
            if req.action == _UNMASK:
                self.unmask(line.index)
            else:
                self.mask(line.index)

    @staticmethod
    def _dup(fd: int) -> int:
        try:
            return os.dup(fd)
        except OSError as err:
            raise VfioError(err.errno or errno.EMFILE, f"cannot dup fd {fd}: {err}") from err

    # -- state transitions ------------------------------------------------------------

    def mask(self, index: int) -> None:
        """MASK: level lines are disabled at the source now; edge lines lazily."""
        line = self._line(index)
        if line.masked:
            return
        line.masked = True
        if self.observer is not None:
            self.observer(index, "masked")
        self._sync_source(line)

    def unmask(self, index: int) -> None:
        """UNMASK: re-enable the line; a latched edge is delivered, an asserted level line
        fires again (from the backend, possibly before this returns)."""
        line = self._line(index)
        if not line.masked:
            return
        line.masked = False
        line.stats.unmasks += 1
        if self.observer is not None:
            self.observer(index, "unmasked")
        if line.pending_edge:
            line.pending_edge = False
            self._signal(line)
        self._sync_source(line)

    def irq_fired(self, index: int) -> None:
        """The backend reports that line ``index`` fired (IrqListener)."""
        if not 0 <= index < len(self.lines):
            return
        line = self.lines[index]
        line.stats.fired += 1
        if self.observer is not None:
            self.observer(index, "fired")
        if not line.source_enabled:
            # Masked at the source or no trigger: the backend raced its mask. A level
            # line that is still asserted fires again on unmask; nothing is lost.
            line.stats.spurious += 1
            return
        self._line_event(line)

    def _line_event(self, line: IrqLine) -> None:
        if line.trigger_fd is None:
            line.stats.spurious += 1
            return
        if line.level:
            if line.masked:
                line.stats.spurious += 1
                return
            # Signal before masking at the source: the state is already masked, and the
            # waiter gets going while the backend is told.
            line.masked = True
            self._signal(line)
            if self.observer is not None:
                self.observer(line.index, "masked")
            self._sync_source(line)
            return
        if line.masked:
            line.stats.latched += 1
            line.pending_edge = True
            self._sync_source(line)
            return
        self._signal(line)

    def _signal(self, line: IrqLine) -> None:
        if line.trigger_fd is None:
            return
        os.eventfd_write(line.trigger_fd, 1)
        line.stats.delivered += 1
        if self.observer is not None:
            self.observer(line.index, "delivered")

    def _sync_source(self, line: IrqLine) -> None:
        """Tell the backend what the line's state asks for, if it changed.

        Enabled iff a trigger is set and the line is not masked — except a masked edge
        line, which stays enabled until an edge is latched (lazy disable).
        """
        blocked = line.masked and (line.level or line.pending_edge)
        want = line.trigger_fd is not None and not blocked
        if want == line.source_enabled:
            return
        line.source_enabled = want
        if want:
            self._source.unmask_irq(line.index)  # may re-enter irq_fired
        else:
            self._source.mask_irq(line.index)

    # -- fds --------------------------------------------------------------------------

    def _set_trigger(self, line: IrqLine, fd: int | None) -> None:
        old, line.trigger_fd = line.trigger_fd, fd
        if fd is None:
            line.pending_edge = False
        try:
            self._sync_source(line)
        finally:
            # The replaced fd is ours to close even when the backend failed (a removed
            # device must not leak the client's eventfds).
            if old is not None:
                os.close(old)

    def _set_watch(self, line: IrqLine, attr: str, fd: int | None, handler: object) -> None:
        old = getattr(line, attr)
        if old is not None:
            self._reactor.remove_reader(old)
            os.close(old)
        setattr(line, attr, fd)
        if fd is not None:
            index = line.index
            self._reactor.add_reader(fd, lambda: handler(index))  # type: ignore[operator]

    def _on_unmask_fd(self, index: int) -> None:
        fd = self.lines[index].unmask_fd
        if fd is not None and _drain(fd):
            self.unmask(index)

    def _on_mask_fd(self, index: int) -> None:
        fd = self.lines[index].mask_fd
        if fd is not None and _drain(fd):
            self.mask(index)

    def teardown(self) -> None:
        """Close every fd and return each line to its initial state (unmasked, no trigger,
        disabled at the source). Used when a client goes away and on open/close.

        Every fd is closed and every line reset even if the backend fails to mask a
        line (a device removed under us); the first such HostError/OSError is raised
        afterwards.
        """
        failure: HostError | OSError | None = None
        for line in self.lines:
            self._set_watch(line, "unmask_fd", None, None)
            self._set_watch(line, "mask_fd", None, None)
            try:
                self._set_trigger(line, None)
            except (HostError, OSError) as err:
                failure = failure or err
            line.masked = False
            line.pending_edge = False
        if failure is not None:
            raise failure

    def _line(self, index: int) -> IrqLine:
        if not 0 <= index < len(self.lines):
            raise VfioError(
                errno.EINVAL, f"IRQ index {index} out of range (device has {len(self.lines)})"
            )
        return self.lines[index]
