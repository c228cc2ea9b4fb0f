"""Interrupts passed straight through to a kernel VFIO device (no relay in this process).

A device bound to a kernel VFIO driver (platpass_vfio, vfio-platform, vfio-amba) signals
eventfds from its own interrupt handler and unmasks from an eventfd through virqfd. So
the vfio-user client's eventfds are handed to the kernel device fd as they are
(``VFIO_DEVICE_SET_IRQS``): the kernel takes its own references, the server closes its
copies, and an interrupt reaches the client (or KVM, through an irqfd) without waking this
process. :class:`KernelIrqs` stands where :class:`platpass.vfio_device.irqs.IrqController`
stands for relayed backends; the interrupt semantics are the kernel's, as
``VFIO_DEVICE_GET_IRQ_INFO`` reports them (vfio-platform: level lines AUTOMASKED and
MASKABLE, edge lines neither; MASK with an eventfd is not implemented there).

Its line statistics count only what passes through this process: ``fired`` and
``delivered`` stay zero however many interrupts the client receives.

vfio-platform enables a line only while a trigger is set (it frees the interrupt when the
trigger goes), so UNMASK is sent only while one is: a line the kernel automasked after the
last trigger went stays masked until the next client's UNMASK, which VMMs send once they
have wired the trigger and resampler (QEMU does). Each line is probed when the device is
opened (a trigger set with a throwaway eventfd, then cleared): a line the kernel cannot
request fails there, where ``assign`` rolls back, not at a client's first SET_IRQS.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from platpass.errors import HostError, VfioError
from platpass.host.vfio_kernel.syscalls import KernelCallError
from platpass.vfio_device.irqs import IRQS_PER_INDEX, IrqInfo, IrqLine
from platpass.vfio_device.uapi import IrqInfoFlags, IrqSetFlags

if TYPE_CHECKING:
    from platpass.host.vfio_kernel.backend import VfioKernelBackend

_NONE = int(IrqSetFlags.DATA_NONE)
_BOOL = int(IrqSetFlags.DATA_BOOL)
_EVENTFD = int(IrqSetFlags.DATA_EVENTFD)
_MASK = int(IrqSetFlags.ACTION_MASK)
_UNMASK = int(IrqSetFlags.ACTION_UNMASK)
_TRIGGER = int(IrqSetFlags.ACTION_TRIGGER)
_DATA = int(IrqSetFlags.data_mask())
_ACTION = int(IrqSetFlags.action_mask())

#: ``IrqLine.trigger_fd`` of a line whose trigger eventfd the kernel holds.
KERNEL_HELD = -1


class KernelIrqs:
    """SET_IRQS of every IRQ index, passed to the kernel device (see the module doc)."""

    def __init__(self, backend: VfioKernelBackend) -> None:
        self._backend = backend
        self._infos = tuple(backend.irq_infos)
        self.lines = tuple(IrqLine(i, IrqInfoFlags.AUTOMASKED in info.flags)
                           for i, info in enumerate(self._infos))
        #: Kept for the IrqController interface (``serve --trace``); never called: no
        #: interrupt event passes through this process.
        self.observer: Callable[[int, str], None] | None = None
        for line in self.lines:
            self._probe(line.index)

    def _probe(self, index: int) -> None:
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._backend.set_irqs(IrqSetFlags(_EVENTFD | _TRIGGER), index, 0, 1, fds=(efd,))
            self._backend.set_irqs(IrqSetFlags(_NONE | _TRIGGER), index, 0, 0)
        finally:
            os.close(efd)

    @property
    def count(self) -> int:
        """Number of IRQ indexes."""
        return len(self.lines)

    def info(self, index: int) -> IrqInfo:
        """``VFIO_DEVICE_GET_IRQ_INFO`` as the kernel answered it."""
        line = self._line(index)
        return IrqInfo(line.index, IrqInfoFlags(int(self._infos[index].flags)),
                       IRQS_PER_INDEX)

    def set_irqs(self, index: int, flags: int, start: int, count: int, *,
                 bools: Sequence[bool] = (), fds: Sequence[int] = ()) -> None:
        """``VFIO_DEVICE_SET_IRQS`` on the kernel device with the caller's fds (which the
        caller still owns and closes). Raises :class:`VfioError` with the kernel's errno
        (or EINVAL for what is refused before the call)."""
        line = self._line(index)
        flags = int(flags)
        data, action = flags & _DATA, flags & _ACTION
        if (flags & ~(_DATA | _ACTION) or not data or data & (data - 1) or not action
                or action & (action - 1)):
            raise VfioError(errno.EINVAL, f"SET_IRQS flags {flags:#x}: need one DATA_* and "
                            "one ACTION_*")
        if start != 0 or count not in (0, IRQS_PER_INDEX):
            raise VfioError(errno.EINVAL, f"SET_IRQS index {index}: start {start} count "
                            f"{count} outside its {IRQS_PER_INDEX} interrupt")
        if len(bools) != (count if data == _BOOL else 0) or len(fds) != (
                count if data == _EVENTFD else 0):
            raise VfioError(errno.EINVAL, f"SET_IRQS: {len(bools)} bools and {len(fds)} fds "
                            f"for count {count}")
        try:
            self._backend.set_irqs(IrqSetFlags(flags), index, start, count,
                                   bools=tuple(bools), fds=tuple(fds))
        except KernelCallError as err:
            raise VfioError(err.errno or errno.EIO, str(err)) from err
        if action == _TRIGGER and data == _EVENTFD:
            line.trigger_fd = KERNEL_HELD if fds[0] >= 0 else None
        elif action == _TRIGGER and count == 0:
            line.trigger_fd = None
        elif action == _MASK and data != _EVENTFD and (data == _NONE or bools[0]):
            line.masked = True
        elif action == _UNMASK and data != _EVENTFD and (data == _NONE or bools[0]):
            line.masked = False

    def teardown(self) -> None:
        """The kernel lets go of every eventfd it holds for us (trigger, unmask virqfd),
        a line with a trigger unmasked first; the first failure is raised after trying
        all."""
        failure: HostError | None = None
        for line in self.lines:
            calls: list[tuple[int, int, tuple[int, ...]]] = []
            if IrqInfoFlags.MASKABLE in self._infos[line.index].flags:
                if line.trigger_fd is not None:
                    calls.append((_NONE | _UNMASK, 1, ()))   # while the line is requested
                calls.append((_EVENTFD | _UNMASK, 1, (-1,)))
            calls.append((_NONE | _TRIGGER, 0, ()))
            for flags, count, fds in calls:
                try:
                    self._backend.set_irqs(IrqSetFlags(flags), line.index, 0, count,
                                           fds=fds)
                except HostError as err:
                    failure = failure or err
            line.trigger_fd = None
            line.masked = False
        if failure is not None:
            raise failure

    def _line(self, index: int) -> IrqLine:
        if not 0 <= index < len(self.lines):
            raise VfioError(errno.EINVAL, f"IRQ index {index} out of range (device has "
                            f"{len(self.lines)})")
        return self.lines[index]
