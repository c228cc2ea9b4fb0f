"""The PL031 with its page mapped: guest writes land in the memfd and are taken over at the
next event boundary (trapped access, unmask, 1 Hz tick, host-side input).

Each reconcile rule of the model docstring has a test here: a write through an ``mmap`` of
the backend's memfd (what a guest's store to the mapped page does), then a boundary. The
property test at the end runs the same driver sequences once through trapped accesses and
once through the mapping, and compares them at every boundary.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_helpers import IrqRecorder

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.pl031 import Pl031, Reg


@dataclass
class MappedRtc:
    clock: ManualClock
    model: Pl031
    backend: SimulatedBackend
    irqs: IrqRecorder
    page: mmap.mmap

    def __getitem__(self, offset: int) -> int:
        """A guest load from the mapped page (no boundary)."""
        return struct.unpack_from("<I", self.page, offset)[0]

    def __setitem__(self, offset: int, value: int) -> None:
        """A guest store to the mapped page (no boundary)."""
        struct.pack_into("<I", self.page, offset, value)

    def trapped_read(self, offset: int = Reg.RIS) -> int:
        """Some other access that does reach the backend: a boundary."""
        return self.backend.read(0, offset, 4)

    def close(self) -> None:
        self.page.close()
        self.irqs.close()
        self.backend.close()


def open_rtc(*, initial: int = 1000, running: bool = True, start: float = 0.0,
             automask: bool = True) -> MappedRtc:
    clock = ManualClock(start=start)
    model = Pl031(clock, initial=initial, running=running)
    backend = SimulatedBackend(model)
    source = backend.regions[0].map_source
    assert source is not None and backend.regions[0].side_effect_ranges == ()
    page = mmap.mmap(source.fd, 0x1000, offset=source.offset)
    return MappedRtc(clock, model, backend, IrqRecorder(backend, automask=automask), page)


@pytest.fixture
def rtc() -> Iterator[MappedRtc]:
    made = open_rtc(start=50.5)   # ticks at 51.5, 52.5, ...
    yield made
    made.close()


def test_mapped_lr_loads_the_counter_at_the_next_boundary(rtc: MappedRtc) -> None:
    rtc[Reg.LR] = 5000                                   # pl031_set_time
    assert rtc[Reg.DR] == 1000                           # not yet: no boundary
    assert rtc.model.counter == 1000
    rtc.clock.advance(0.25)
    assert rtc.trapped_read() == 0                       # boundary: the load happens now
    assert rtc[Reg.DR] == 5000 and rtc[Reg.LR] == 5000
    rtc.clock.advance(1.0)                               # a second after the load
    assert rtc[Reg.DR] == 5001


def test_mapped_lr_is_seen_by_the_tick_at_most_one_second_later(rtc: MappedRtc) -> None:
    rtc.clock.advance(1.0)                               # tick at 51.5: counter 1001
    rtc[Reg.LR] = 7000
    rtc.clock.advance(0.999)
    assert rtc[Reg.DR] == 1001                           # stale until the tick
    rtc.clock.advance(0.001)                             # tick at 52.5: reconcile, load
    assert rtc[Reg.DR] == 7000
    assert rtc.model.live_timers == 1                    # the load did not add a tick
    rtc.clock.advance(3.0)
    assert rtc[Reg.DR] == 7003


def test_mapped_lr_of_the_value_already_held_is_not_seen(rtc: MappedRtc) -> None:
    """The documented limit: an unchanged memfd word carries no write."""
    rtc.backend.write(0, Reg.LR, 4, 2000)                # trapped: counter 2000
    rtc.clock.advance(3.0)
    assert rtc[Reg.DR] == 2003
    rtc[Reg.LR] = 2000                                   # same value through the mapping
    assert not rtc.backend.mapped_writes_pending
    rtc.trapped_read()
    assert rtc[Reg.DR] == 2003                           # silicon would read 2000


def test_mapped_icr_clears_the_interrupt_and_reads_zero_again(rtc: MappedRtc) -> None:
    rtc[Reg.MR] = 1002
    rtc[Reg.IMSC] = 1
    rtc.clock.advance(1.0)                               # 1001; writes taken over
    assert rtc.irqs.take() == []
    rtc.clock.advance(1.0)                               # 1002: match
    assert rtc.irqs.take() == [0]
    assert (rtc[Reg.RIS], rtc[Reg.MIS]) == (1, 1)
    rtc[Reg.ICR] = 1                                     # pl031_interrupt's ack
    assert rtc[Reg.RIS] == 1 and rtc.backend.line(0)     # until the boundary
    rtc.backend.unmask_irq(0)                            # the EOI: reconcile first
    assert rtc.irqs.take() == []                         # line already low: no re-fire
    assert not rtc.backend.line(0)
    assert (rtc[Reg.RIS], rtc[Reg.MIS], rtc[Reg.ICR]) == (0, 0, 0)
    rtc.clock.advance(10.0)
    assert rtc.irqs.take() == []


def test_unmask_without_a_mapped_ack_fires_again(rtc: MappedRtc) -> None:
    """The other side of the ordering: the re-fire check does run after the reconcile."""
    rtc[Reg.MR] = 1001
    rtc[Reg.IMSC] = 1
    rtc.trapped_read()
    rtc.clock.advance(1.0)
    assert rtc.irqs.take() == [0]
    rtc.backend.unmask_irq(0)                            # EOI without an ack
    assert rtc.irqs.take() == [0]
    rtc[Reg.ICR] = 0                                     # a zero write clears nothing
    rtc.backend.unmask_irq(0)
    assert rtc.irqs.take() == [0]


def test_mapped_imsc_moves_the_line_at_the_boundary(rtc: MappedRtc) -> None:
    rtc.backend.write(0, Reg.MR, 4, 1001)
    rtc.clock.advance(1.0)                               # match, masked
    assert rtc[Reg.RIS] == 1 and rtc[Reg.MIS] == 0 and rtc.irqs.take() == []
    rtc[Reg.IMSC] = 0xFFFF_FFFF                          # only bit 0 exists
    assert rtc.irqs.take() == []
    rtc.trapped_read(Reg.DR)                             # boundary
    assert rtc.irqs.take() == [0]
    assert rtc[Reg.IMSC] == 1 and rtc[Reg.MIS] == 1      # reads back what the IP keeps
    rtc[Reg.IMSC] = 0                                    # masked again at the source
    rtc.backend.unmask_irq(0)
    assert not rtc.backend.line(0) and rtc.irqs.take() == []


def test_mapped_mr_matches_at_the_right_second(rtc: MappedRtc) -> None:
    rtc.backend.write(0, Reg.IMSC, 4, 1)
    rtc[Reg.MR] = rtc[Reg.DR] + 3                        # alarm three seconds from now
    for second in (1, 2):
        rtc.clock.advance(1.0)
        assert rtc.irqs.take() == [], second
    rtc.clock.advance(0.999)
    assert rtc.irqs.take() == []
    rtc.clock.advance(0.001)
    assert rtc.irqs.take() == [0]
    assert rtc[Reg.DR] == 1003 == rtc.model.mr


def test_mapped_cr_starts_a_stopped_counter_at_the_next_edge() -> None:
    rtc = open_rtc(initial=10, running=False)
    try:
        rtc.clock.advance(2.5)
        assert rtc[Reg.DR] == 10 and rtc[Reg.CR] == 0
        rtc[Reg.CR] = rtc[Reg.CR] | 1                    # pl031_probe
        rtc.clock.advance(0.5)                           # the 1 Hz edge sees it
        assert rtc[Reg.CR] == 1 and rtc.model.started
        rtc.clock.advance(2.0)
        assert rtc[Reg.DR] == 12
        rtc[Reg.CR] = 0                                  # cannot stop it
        rtc.clock.advance(1.0)
        assert rtc[Reg.CR] == 1 and rtc[Reg.DR] == 13
    finally:
        rtc.close()


@pytest.mark.parametrize("offset", [Reg.DR, Reg.RIS, Reg.MIS, 0xFE0, 0xFFC, 0x020, 0x800])
def test_mapped_writes_to_read_only_words_are_undone(rtc: MappedRtc, offset: int) -> None:
    before = rtc[offset]
    rtc[offset] = 0xDEAD_BEEF
    rtc[Reg.MR] = 77                                     # a storage write in the same batch
    rtc.trapped_read()
    assert rtc[offset] == before
    assert rtc[Reg.MR] == 77 == rtc.model.mr
    assert not rtc.backend.mapped_writes_pending


def test_host_side_input_is_a_boundary(rtc: MappedRtc) -> None:
    rtc[Reg.MR] = 4242
    rtc.model.set_time(4241)                             # the board sets its RTC
    assert rtc.model.mr == 4242
    rtc.backend.write(0, Reg.IMSC, 4, 1)
    rtc.clock.advance(1.0)
    assert rtc.irqs.take() == [0]


def test_linux_rtc_pl031_sequence_through_the_mapping(rtc: MappedRtc) -> None:
    """drivers/rtc/rtc-pl031.c on a mapped page: probe (CR |= EN), set_time (LR),
    read_time (DR), set_alarm (MR, then alarm_irq_enable: ICR = AI, IMSC |= AI),
    pl031_interrupt (MIS, ICR), EOI. No trapped access at all."""
    rtc[Reg.CR] = rtc[Reg.CR] | 1
    rtc[Reg.LR] = 1_700_000_000
    rtc.clock.advance(1.0)                               # tick: load
    assert rtc[Reg.DR] == 1_700_000_000
    rtc[Reg.MR] = rtc[Reg.DR] + 2
    rtc[Reg.ICR] = 1
    rtc[Reg.IMSC] = rtc[Reg.IMSC] | 1
    rtc.clock.advance(1.0)
    assert rtc.irqs.take() == []
    rtc.clock.advance(1.0)
    assert rtc.irqs.take() == [0]
    assert rtc[Reg.MIS] & 1
    rtc[Reg.ICR] = 1
    rtc.backend.unmask_irq(0)
    assert rtc.irqs.take() == []
    assert rtc[Reg.MIS] == 0 and rtc[Reg.DR] == 1_700_000_002
    assert rtc.backend.mapped_writes_pending is False


# -- trapped versus mapped ---------------------------------------------------------------

WRITABLE = (Reg.MR, Reg.LR, Reg.CR, Reg.IMSC, Reg.ICR)
write_op = st.tuples(st.sampled_from(WRITABLE), st.integers(0, 3))
batch = st.tuples(
    st.lists(write_op, min_size=1, max_size=4, unique_by=lambda w: w[0]),
    st.sampled_from(["read", "unmask", "set_time"]),
    st.sampled_from([0, 300, 1000, 1700, 2500]),         # ms until the next batch
)


def state(rtc: MappedRtc) -> tuple[int, ...]:
    m = rtc.model
    return (m.counter, m.mr, m.lr, m.imsc, m.ris, int(m.started), int(rtc.backend.line(0)))


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(batch, max_size=12), running=st.booleans())
def test_mapped_and_trapped_drivers_agree_at_every_boundary(
        batches: list[tuple[list[tuple[int, int]], str, int]], running: bool) -> None:
    """The same writes, made once as trapped accesses and once through the mapping
    followed by an event boundary at the same instant, leave the two RTCs in the same
    state and line level; with one write per batch they also report the same interrupts
    (at an unmask boundary the mapped one may report once what the trapped one reported
    twice; with several, a line raised and lowered within the batch is never reported by
    the mapped one: the interrupts coalesce). Values are
    small so that matches happen; an RTCLR write of the value RTCLR holds is made
    different (the one documented case the mapping cannot see)."""
    trapped = open_rtc(initial=3, running=running, automask=False)
    mapped = open_rtc(initial=3, running=running, automask=False)
    try:
        for writes, boundary, delay in batches:
            for offset, small in writes:
                value = trapped.model.counter + small if offset in (Reg.MR, Reg.LR) \
                    else small
                if offset == Reg.LR and value == mapped.model.lr:
                    value += 1
                trapped.backend.write(0, offset, 4, value)
                mapped[offset] = value
            match boundary:
                case "read":
                    assert trapped.trapped_read(Reg.MIS) == mapped.trapped_read(Reg.MIS)
                case "unmask":
                    trapped.backend.unmask_irq(0)
                    mapped.backend.unmask_irq(0)
                case "set_time":
                    # the host sets the RTC: the state before that (a load) is compared
                    before = state(trapped)
                    mapped.model.run_step(lambda: None)
                    assert state(mapped) == before
                    trapped.model.set_time(100)
                    mapped.model.set_time(100)
            assert state(mapped) == state(trapped), (writes, boundary)
            assert not mapped.backend.mapped_writes_pending
            fired_t, fired_m = trapped.irqs.take(), mapped.irqs.take()
            if len(writes) > 1:
                # a line raised and lowered again between two trapped writes fired; taken
                # over together at the boundary, the same writes leave it low: no report
                assert len(fired_m) <= len(fired_t)
            elif boundary == "unmask":
                # a trapped write that raises the line fires at once and the unmask fires
                # again; taken over at the unmask, the same write fires once
                assert bool(fired_m) == bool(fired_t)
            else:
                assert fired_m == fired_t
            trapped.clock.advance(delay / 1000)
            mapped.clock.advance(delay / 1000)
            assert state(mapped) == state(trapped)
            assert trapped.irqs.take() == mapped.irqs.take()
            assert bytes(mapped.page[:0x20]) == bytes(trapped.page[:0x20])
    finally:
        trapped.close()
        mapped.close()


def test_a_store_racing_the_reconcile_is_kept_for_the_next_boundary(rtc: MappedRtc) -> None:
    """The vCPU runs while the backend reconciles: a store to a storage register landing
    after the backend read it must not be overwritten by the restore pass."""
    rtc[Reg.DR] = 0xDEAD                                 # something to restore
    rtc[Reg.MR] = 10
    model = rtc.model
    original = model.write_reg

    def write_reg_then_guest_stores(offset: int, value: int, mask: int) -> None:
        original(offset, value, mask)
        rtc[Reg.MR] = 20                                 # the guest, mid-reconcile

    model.write_reg = write_reg_then_guest_stores        # type: ignore[method-assign]
    rtc.trapped_read()
    model.write_reg = original                           # type: ignore[method-assign]
    assert model.mr == 10 and rtc[Reg.MR] == 20          # kept, not rolled back to 10
    assert rtc[Reg.DR] == 1000                           # the read-only word was undone
    assert rtc.backend.mapped_writes_pending
    rtc.trapped_read()                                   # the next boundary takes it
    assert model.mr == 20 and not rtc.backend.mapped_writes_pending
