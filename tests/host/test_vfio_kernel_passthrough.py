"""SET_IRQS passed straight to a kernel VFIO device (KernelIrqs), against a recording fake.

The real kernel runs in tests/integration/kernel (guest/kmod.py: a vfio-user client's
eventfd signalled by the kernel with nothing relayed by the server).
"""

from __future__ import annotations

import errno
import os

import pytest

from platpass.errors import VfioError
from platpass.host.vfio_kernel.passthrough import KERNEL_HELD, KernelIrqs
from platpass.host.vfio_kernel.syscalls import KernelCallError
from platpass.host.vfio_kernel.uapi import KernelIrqInfo
from platpass.vfio_device.uapi import IrqInfoFlags
from platpass.vfio_device.uapi import IrqSetFlags as F

LEVEL = IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | IrqInfoFlags.AUTOMASKED


class FakeKernel:
    def __init__(self, *flags: IrqInfoFlags) -> None:
        self.irq_infos = [KernelIrqInfo(i, f, 1) for i, f in enumerate(flags)]
        self.calls: list[tuple] = []
        self.fail: int | None = None

    def set_irqs(self, flags, index, start, count, *, bools=(), fds=()) -> None:
        if self.fail is not None:
            raise KernelCallError(self.fail, "ioctl DEVICE_SET_IRQS", "fake")
        self.calls.append((int(flags), index, start, count, tuple(bools), tuple(fds)))


def test_info_is_the_kernels_and_eventfds_go_to_the_kernel_as_given() -> None:
    kernel = FakeKernel(LEVEL, IrqInfoFlags.EVENTFD)
    irqs = KernelIrqs(kernel)  # type: ignore[arg-type]
    kernel.calls.clear()
    assert irqs.count == 2
    assert irqs.info(0).flags == LEVEL and irqs.info(1).flags == IrqInfoFlags.EVENTFD
    assert irqs.lines[0].level and not irqs.lines[1].level
    efd = os.eventfd(0)
    try:
        irqs.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=(efd,))
        irqs.set_irqs(0, F.DATA_EVENTFD | F.ACTION_UNMASK, 0, 1, fds=(efd,))
    finally:
        os.close(efd)
    assert kernel.calls == [(int(F.DATA_EVENTFD | F.ACTION_TRIGGER), 0, 0, 1, (), (efd,)),
                            (int(F.DATA_EVENTFD | F.ACTION_UNMASK), 0, 0, 1, (), (efd,))]
    assert irqs.lines[0].trigger_fd == KERNEL_HELD
    assert irqs.lines[0].stats.fired == irqs.lines[0].stats.delivered == 0


def test_kernel_errno_is_the_reply_and_bad_calls_never_reach_it() -> None:
    kernel = FakeKernel(IrqInfoFlags.EVENTFD)
    irqs = KernelIrqs(kernel)  # type: ignore[arg-type]
    kernel.calls.clear()
    for args in ((1, F.DATA_NONE | F.ACTION_TRIGGER, 0, 1), (0, F.DATA_NONE, 0, 1),
                 (0, F.DATA_NONE | F.ACTION_MASK, 1, 1),
                 (0, F.DATA_BOOL | F.DATA_NONE | F.ACTION_MASK, 0, 1)):
        with pytest.raises(VfioError) as info:
            irqs.set_irqs(*args)
        assert info.value.errno == errno.EINVAL
    assert kernel.calls == []
    kernel.fail = errno.EINVAL  # vfio-platform: an edge line is not maskable
    with pytest.raises(VfioError) as info:
        irqs.set_irqs(0, F.DATA_NONE | F.ACTION_MASK, 0, 1)
    assert info.value.errno == errno.EINVAL and not irqs.lines[0].masked


def test_each_line_is_probed_when_opened_and_a_failing_one_fails_there() -> None:
    kernel = FakeKernel(LEVEL, IrqInfoFlags.EVENTFD)
    KernelIrqs(kernel)  # type: ignore[arg-type]
    assert [(c[0], c[1], c[3]) for c in kernel.calls] == [
        (int(F.DATA_EVENTFD | F.ACTION_TRIGGER), 0, 1), (int(F.DATA_NONE | F.ACTION_TRIGGER), 0, 0),
        (int(F.DATA_EVENTFD | F.ACTION_TRIGGER), 1, 1), (int(F.DATA_NONE | F.ACTION_TRIGGER), 1, 0)]
    kernel.fail = errno.EINVAL  # e.g. a parent interrupt left IRQ_NOREQUEST
    with pytest.raises(KernelCallError):
        KernelIrqs(kernel)  # type: ignore[arg-type]


def test_teardown_unmasks_only_while_requested_then_releases_the_eventfds() -> None:
    kernel = FakeKernel(LEVEL, IrqInfoFlags.EVENTFD)
    irqs = KernelIrqs(kernel)  # type: ignore[arg-type]
    efd = os.eventfd(0)
    try:
        irqs.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=(efd,))
    finally:
        os.close(efd)
    irqs.set_irqs(0, F.DATA_NONE | F.ACTION_MASK, 0, 1)
    assert irqs.lines[0].masked
    kernel.calls.clear()
    irqs.teardown()
    assert kernel.calls == [
        (int(F.DATA_NONE | F.ACTION_UNMASK), 0, 0, 1, (), ()),
        (int(F.DATA_EVENTFD | F.ACTION_UNMASK), 0, 0, 1, (), (-1,)),
        (int(F.DATA_NONE | F.ACTION_TRIGGER), 0, 0, 0, (), ()),
        (int(F.DATA_NONE | F.ACTION_TRIGGER), 1, 0, 0, (), ())]
    assert not irqs.lines[0].masked and irqs.lines[0].trigger_fd is None
    kernel.calls.clear()
    irqs.teardown()  # no trigger: no bare UNMASK (the kernel would enable a freed line)
    assert (int(F.DATA_NONE | F.ACTION_UNMASK), 0, 0, 1, (), ()) not in kernel.calls
