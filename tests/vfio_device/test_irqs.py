"""SET_IRQS in full, and the level/edge interrupt rules, on a device with real eventfds."""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from vfio_testbed import LineBackend, QuietDriver, drain, make_node, open_fds

from platpass.errors import VfioError
from platpass.firmware.model import Trigger
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqInfoFlags
from platpass.vfio_device.uapi import IrqSetFlags as F

TRIGGER_FD = F.DATA_EVENTFD | F.ACTION_TRIGGER
UNMASK_FD = F.DATA_EVENTFD | F.ACTION_UNMASK
MASK_FD = F.DATA_EVENTFD | F.ACTION_MASK


@dataclass
class Rig:
    device: VfioDevice
    backend: LineBackend
    reactor: EpollReactor

    def snapshot(self) -> tuple[object, ...]:
        """Everything a refused SET_IRQS must leave alone."""
        lines = tuple(
            (ln.trigger_fd, ln.unmask_fd, ln.mask_fd, ln.masked, ln.pending_edge,
             ln.source_enabled)
            for ln in self.device.irqs.lines
        )
        watched = tuple(
            self.reactor.watching(fd)
            for ln in self.device.irqs.lines
            for fd in (ln.unmask_fd, ln.mask_fd) if fd is not None
        )
        return lines, tuple(self.backend.enabled), watched, sorted(open_fds())


@pytest.fixture
def rig(reactor: EpollReactor) -> Rig:
    """Index 0 is a level line, index 1 an edge line."""
    backend = LineBackend(irq_count=2)
    node = make_node(triggers=(Trigger.LEVEL_HIGH, Trigger.EDGE_RISING))
    device = VfioDevice(node, QuietDriver(node), backend, reactor)
    return Rig(device, backend, reactor)


def test_irq_info_flags_follow_the_trigger_type(rig: Rig) -> None:
    level, edge = rig.device.irq_info(0), rig.device.irq_info(1)
    assert level.flags == IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | IrqInfoFlags.AUTOMASKED
    assert edge.flags == IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE
    assert (level.count, edge.count) == (1, 1)
    assert rig.device.info.num_irqs == 2
    with pytest.raises(VfioError) as err:
        rig.device.irq_info(2)
    assert err.value.errno == errno.EINVAL


def test_unknown_trigger_is_automasked(reactor: EpollReactor) -> None:
    node = make_node(triggers=(Trigger.UNKNOWN,))
    device = VfioDevice(node, QuietDriver(node), LineBackend(), reactor)
    assert device.irq_info(0).flags & IrqInfoFlags.AUTOMASKED


def test_line_is_disabled_at_the_source_until_a_trigger_is_set(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    assert rig.backend.enabled == [False, False]
    rig.backend.raise_line(0)
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    # The line was already asserted: enabling it delivers it at once, and automasks it.
    assert drain(efd) == 1
    assert rig.device.irqs.lines[0].masked
    assert rig.backend.enabled[0] is False


def test_level_line_is_masked_until_unmask_and_fires_again_if_still_asserted(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    assert rig.backend.enabled[0]
    rig.backend.raise_line(0)
    assert drain(efd) == 1
    assert rig.backend.enabled[0] is False
    # Re-asserting while masked delivers nothing.
    rig.backend.lower_line(0)
    rig.backend.raise_line(0)
    assert drain(efd) == 0
    # UNMASK with the line still asserted: it fires again (and is masked again).
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    assert drain(efd) == 1
    assert rig.device.irqs.lines[0].masked
    # The guest handled it: line low, UNMASK (DATA_BOOL true) -> enabled, nothing pending.
    rig.backend.lower_line(0)
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_UNMASK, 0, 1, bools=[True])
    assert drain(efd) == 0
    assert rig.backend.enabled[0]
    assert not rig.device.irqs.lines[0].masked
    stats = rig.device.stats.irqs[0]
    assert (stats.delivered, stats.unmasks) == (2, 2)


def test_unmask_and_mask_with_bool_false_do_nothing(rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    rig.backend.raise_line(0)
    assert drain(efd) == 1
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_UNMASK, 0, 1, bools=[False])
    assert rig.device.irqs.lines[0].masked
    rig.backend.lower_line(0)
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_MASK, 0, 1, bools=[False])
    assert not rig.device.irqs.lines[0].masked
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_MASK, 0, 1, bools=[True])
    assert rig.device.irqs.lines[0].masked
    assert rig.backend.enabled[0] is False


def test_user_mask_blocks_a_level_line_and_unmask_delivers_it(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_MASK, 0, 1)
    assert rig.backend.enabled[0] is False
    rig.backend.raise_line(0)
    assert drain(efd) == 0
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    assert drain(efd) == 1


def test_resampler_eventfd_unmasks(rig: Rig, eventfd: Callable[[], int]) -> None:
    trigger, resample = eventfd(), eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[trigger])
    rig.device.set_irqs(0, UNMASK_FD, 0, 1, fds=[resample])
    kept = rig.device.irqs.lines[0].unmask_fd
    assert kept is not None and kept != resample and rig.reactor.watching(kept)
    rig.backend.raise_line(0)
    assert drain(trigger) == 1
    # The guest EOIs with the line still high: KVM writes the resample fd.
    os.eventfd_write(resample, 1)
    rig.reactor.run_once(0.5)
    assert drain(trigger) == 1  # still asserted: fired again
    rig.backend.lower_line(0)
    os.eventfd_write(resample, 1)
    rig.reactor.run_once(0.5)
    assert drain(trigger) == 0
    assert not rig.device.irqs.lines[0].masked and rig.backend.enabled[0]
    assert drain(resample) == 0  # the device consumed the writes
    # fd -1 removes the resampler.
    rig.device.set_irqs(0, UNMASK_FD, 0, 1, fds=[-1])
    assert rig.device.irqs.lines[0].unmask_fd is None
    assert not rig.reactor.watching(kept)
    rig.backend.raise_line(0)
    assert drain(trigger) == 1
    os.eventfd_write(resample, 1)
    assert rig.reactor.run_once(0.05) == 0
    assert rig.device.irqs.lines[0].masked


def test_mask_eventfd_masks(rig: Rig, eventfd: Callable[[], int]) -> None:
    trigger, mask = eventfd(), eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[trigger])
    rig.device.set_irqs(0, MASK_FD, 0, 1, fds=[mask])
    os.eventfd_write(mask, 1)
    rig.reactor.run_once(0.5)
    assert rig.device.irqs.lines[0].masked
    rig.backend.raise_line(0)
    assert drain(trigger) == 0
    rig.device.set_irqs(0, MASK_FD, 0, 1, fds=[-1])
    assert rig.device.irqs.lines[0].mask_fd is None


def test_loopback_trigger_on_a_level_line_automasks(rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_TRIGGER, 0, 1)
    assert drain(efd) == 1
    assert rig.device.irqs.lines[0].masked
    # Already masked: a second loopback is not delivered (Linux's IRQ_NONE case).
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_TRIGGER, 0, 1, bools=[True])
    assert drain(efd) == 0
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_TRIGGER, 0, 1, bools=[False])
    assert drain(efd) == 0
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_TRIGGER, 0, 1, bools=[True])
    assert drain(efd) == 1
    assert rig.device.stats.irqs[0].loopbacks == 3


def test_loopback_without_trigger_is_refused(rig: Rig) -> None:
    before = rig.snapshot()
    for flags, bools in ((F.DATA_NONE | F.ACTION_TRIGGER, []),
                         (F.DATA_BOOL | F.ACTION_TRIGGER, [True])):
        with pytest.raises(VfioError) as err:
            rig.device.set_irqs(0, flags, 0, 1, bools=bools)
        assert err.value.errno == errno.EINVAL
    # DATA_BOOL false asks for nothing, so it is accepted even without a trigger.
    rig.device.set_irqs(0, F.DATA_BOOL | F.ACTION_TRIGGER, 0, 1, bools=[False])
    assert rig.snapshot() == before


def test_edge_lines_are_never_automasked(rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(1, TRIGGER_FD, 0, 1, fds=[efd])
    for _ in range(3):
        rig.backend.pulse(1)
    assert drain(efd) == 3
    assert not rig.device.irqs.lines[1].masked and rig.backend.enabled[1]
    rig.device.set_irqs(1, F.DATA_NONE | F.ACTION_TRIGGER, 0, 1)
    assert drain(efd) == 1
    assert not rig.device.irqs.lines[1].masked


def test_masked_edge_is_latched_and_replayed_once_on_unmask(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(1, TRIGGER_FD, 0, 1, fds=[efd])
    rig.device.set_irqs(1, F.DATA_NONE | F.ACTION_MASK, 0, 1)
    assert rig.backend.enabled[1]  # lazy: still enabled at the source
    rig.backend.pulse(1)
    assert drain(efd) == 0
    assert rig.backend.enabled[1] is False  # the first latched edge disables the source
    rig.backend.pulse(1)  # lost at the source, collapsed into the latched one
    rig.device.set_irqs(1, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    assert drain(efd) == 1
    assert rig.backend.enabled[1]
    rig.device.set_irqs(1, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    assert drain(efd) == 0
    # Masked with no edge: unmask delivers nothing.
    rig.device.set_irqs(1, F.DATA_NONE | F.ACTION_MASK, 0, 1)
    rig.device.set_irqs(1, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    assert drain(efd) == 0


def test_trigger_replace_and_teardown(rig: Rig, eventfd: Callable[[], int]) -> None:
    fds_before = open_fds()
    first, second = eventfd(), eventfd()
    rig.device.set_irqs(1, TRIGGER_FD, 0, 1, fds=[first])
    kept = rig.device.irqs.lines[1].trigger_fd
    assert kept not in (None, first)
    rig.device.set_irqs(1, TRIGGER_FD, 0, 1, fds=[second])
    rig.backend.pulse(1)
    assert (drain(first), drain(second)) == (0, 1)
    assert open_fds() == fds_before | {first, second, rig.device.irqs.lines[1].trigger_fd}
    rig.device.set_irqs(1, TRIGGER_FD, 0, 1, fds=[-1])
    assert rig.device.irqs.lines[1].trigger_fd is None
    assert rig.backend.enabled[1] is False
    assert open_fds() == fds_before | {first, second}
    rig.backend.pulse(1)
    assert drain(second) == 0
    # fd -1 on an unassigned trigger is a no-op, as vfio.h says.
    rig.device.set_irqs(1, TRIGGER_FD, 0, 1, fds=[-1])


def test_count_zero_data_none_disables(rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_TRIGGER, 0, 0)
    assert rig.device.irqs.lines[0].trigger_fd is None
    assert rig.backend.enabled[0] is False
    rig.backend.raise_line(0)
    assert drain(efd) == 0


def test_trigger_keeps_the_masked_state_like_vfio_platform(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    first, second = eventfd(), eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[first])
    rig.backend.raise_line(0)
    assert drain(first) == 1
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[second])
    assert rig.device.irqs.lines[0].masked and rig.backend.enabled[0] is False
    rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
    assert drain(second) == 1


INVALID_CALLS: list[tuple[str, int, int, int, int, dict[str, object], int]] = [
    ("no data type", 0, F.ACTION_TRIGGER, 0, 1, {}, errno.EINVAL),
    ("no action", 0, F.DATA_NONE, 0, 1, {}, errno.EINVAL),
    ("two data types", 0, F.DATA_NONE | F.DATA_BOOL | F.ACTION_MASK, 0, 1,
     {"bools": [True]}, errno.EINVAL),
    ("two actions", 0, F.DATA_NONE | F.ACTION_MASK | F.ACTION_UNMASK, 0, 1, {}, errno.EINVAL),
    ("unknown flag bit", 0, F.DATA_NONE | F.ACTION_MASK | (1 << 6), 0, 1, {}, errno.EINVAL),
    ("index out of range", 2, F.DATA_NONE | F.ACTION_MASK, 0, 1, {}, errno.EINVAL),
    ("negative index", -1, F.DATA_NONE | F.ACTION_MASK, 0, 1, {}, errno.EINVAL),
    ("start 1", 0, F.DATA_NONE | F.ACTION_MASK, 1, 1, {}, errno.EINVAL),
    ("count 2", 0, F.DATA_NONE | F.ACTION_UNMASK, 0, 2, {}, errno.EINVAL),
    ("negative count", 0, F.DATA_NONE | F.ACTION_UNMASK, 0, -1, {}, errno.EINVAL),
    ("count 0 mask", 0, F.DATA_NONE | F.ACTION_MASK, 0, 0, {}, errno.EINVAL),
    ("count 0 eventfd", 0, TRIGGER_FD, 0, 0, {}, errno.EINVAL),
    ("count 0 start 1", 0, F.DATA_NONE | F.ACTION_TRIGGER, 1, 0, {}, errno.EINVAL),
    ("bool without data", 0, F.DATA_BOOL | F.ACTION_MASK, 0, 1, {}, errno.EINVAL),
    ("two bools", 0, F.DATA_BOOL | F.ACTION_MASK, 0, 1, {"bools": [True, True]}, errno.EINVAL),
    ("eventfd without fd", 0, TRIGGER_FD, 0, 1, {}, errno.EINVAL),
    ("data none with fd", 0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1, {"fds": [-1]}, errno.EINVAL),
    ("closed fd", 0, TRIGGER_FD, 0, 1, {"fds": ["closed"]}, errno.EBADF),
    ("not an eventfd", 0, UNMASK_FD, 0, 1, {"fds": ["pipe"]}, errno.EINVAL),
]


@pytest.mark.parametrize(("why", "index", "flags", "start", "count", "data", "code"),
                         INVALID_CALLS, ids=[c[0] for c in INVALID_CALLS])
def test_invalid_set_irqs_is_refused_and_changes_nothing(
        rig: Rig, eventfd: Callable[[], int], why: str, index: int, flags: int, start: int,
        count: int, data: dict[str, object], code: int) -> None:
    # A configured, interesting state to disturb: trigger + resampler, line fired (masked).
    trigger, resample = eventfd(), eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[trigger])
    rig.device.set_irqs(0, UNMASK_FD, 0, 1, fds=[resample])
    rig.backend.raise_line(0)
    drain(trigger)
    read_end, write_end = os.pipe()
    closed = os.eventfd(0)
    os.close(closed)
    fds = [read_end if fd == "pipe" else closed if fd == "closed" else fd
           for fd in data.get("fds", [])]  # type: ignore[union-attr]
    try:
        before = rig.snapshot()
        with pytest.raises(VfioError) as err:
            rig.device.set_irqs(index, flags, start, count,
                                bools=data.get("bools", []),  # type: ignore[arg-type]
                                fds=fds)
        assert err.value.errno == code, why
        assert rig.snapshot() == before
        assert drain(trigger) == 0
    finally:
        os.close(read_end)
        os.close(write_end)


def test_client_gone_closes_irq_fds_and_keeps_device_state(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    fds_before = open_fds()
    trigger, resample = eventfd(), eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[trigger])
    rig.device.set_irqs(0, UNMASK_FD, 0, 1, fds=[resample])
    kept = rig.device.irqs.lines[0].unmask_fd
    rig.device.write(0, 0x38, 4, 0x1234)
    rig.device.dma_map(0x10000, 0x4000, 3)
    rig.backend.raise_line(0)
    assert rig.device.irqs.lines[0].masked
    removed = rig.device.client_gone()
    assert [(m.iova, m.size) for m in removed] == [(0x10000, 0x4000)]
    assert len(rig.device.iommu) == 0
    assert open_fds() == fds_before | {trigger, resample}
    assert kept is not None and not rig.reactor.watching(kept)
    line = rig.device.irqs.lines[0]
    assert (line.trigger_fd, line.unmask_fd, line.masked) == (None, None, False)
    assert rig.backend.enabled[0] is False
    # Device (register) state is kept for the next client; no reset happened.
    assert rig.device.read(0, 0x38, 4) == 0x1234
    # The next client gets the still-asserted line as soon as it sets a trigger.
    again = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[again])
    assert drain(again) == 1


def test_open_resets_the_device_and_the_irq_state(rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(1, TRIGGER_FD, 0, 1, fds=[efd])
    rig.device.write(0, 0x38, 4, 0xFFFF)
    rig.device.open()
    assert rig.device.read(0, 0x38, 4) == 0
    assert rig.device.irqs.lines[1].trigger_fd is None


def test_reset_quiesces_the_device_and_keeps_irq_configuration(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    rig.backend.raise_line(0)
    rig.device.write(0, 0x38, 4, 0xFFFF)
    rig.device.reset()
    assert rig.device.read(0, 0x38, 4) == 0
    assert rig.device.irqs.lines[0].trigger_fd is not None
    assert rig.device.irqs.lines[0].masked
    assert rig.device.stats.resets == 1


def test_close_releases_everything_and_refuses_later_calls(
        rig: Rig, eventfd: Callable[[], int]) -> None:
    fds_before = open_fds()
    efd = eventfd()
    rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[efd])
    rig.device.close()
    rig.device.close()  # idempotent
    assert rig.backend.closed
    assert rig.device.closed
    assert open_fds() <= fds_before | {efd}
    for call in (lambda: rig.device.read(0, 0, 4),
                 lambda: rig.device.set_irqs(0, F.DATA_NONE | F.ACTION_MASK, 0, 1),
                 lambda: rig.device.region_info(0),
                 rig.device.reset):
        with pytest.raises(VfioError) as err:
            call()
        assert err.value.errno == errno.ENODEV


def test_backend_line_count_must_match_firmware(reactor: EpollReactor) -> None:
    node = make_node(triggers=(Trigger.LEVEL_HIGH,))
    with pytest.raises(VfioError) as err:
        VfioDevice(node, QuietDriver(node), LineBackend(irq_count=2), reactor)
    assert err.value.errno == errno.ENODEV


def test_resampler_works_with_fds_past_fd_setsize(rig: Rig, eventfd: Callable[[], int]) -> None:
    """A server holds many fds: the device's own copies can sit past FD_SETSIZE (1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    trigger, resample = eventfd(), eventfd()
    filler: list[int] = []
    try:
        while not filler or filler[-1] < 1100:
            filler.append(os.dup(trigger))
        rig.device.set_irqs(0, TRIGGER_FD, 0, 1, fds=[trigger])
        rig.device.set_irqs(0, UNMASK_FD, 0, 1, fds=[resample])
        assert rig.device.irqs.lines[0].unmask_fd > 1024  # type: ignore[operator]
        rig.backend.raise_line(0)
        assert drain(trigger) == 1
        rig.backend.lower_line(0)
        os.eventfd_write(resample, 1)
        rig.reactor.run_once(0.5)
        assert not rig.device.irqs.lines[0].masked
    finally:
        rig.device.client_gone()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
