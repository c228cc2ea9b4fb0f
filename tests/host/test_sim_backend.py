"""SimulatedBackend: the memfd mirror, reconciliation of mapped writes, interrupt contract."""

from __future__ import annotations

import mmap
import struct
from typing import ClassVar

import pytest
from sim_helpers import IrqRecorder, Regs

from platpass.errors import HostError
from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.base import DeviceModel
from platpass.host.simulated.models.pl011 import Pl011
from platpass.host.simulated.models.pl031 import Pl031
from platpass.host.simulated.models.pl031 import Reg as Rtc


def u32(mapping: mmap.mmap, offset: int) -> int:
    return struct.unpack_from("<I", mapping, offset)[0]


@pytest.fixture
def rtc():
    clock = ManualClock()
    backend = SimulatedBackend(Pl031(clock, initial=500))
    source = backend.regions[0].map_source
    assert source is not None
    mapping = mmap.mmap(source.fd, 4096, offset=source.offset)
    yield clock, backend, mapping
    mapping.close()
    backend.close()


def test_region_and_side_effect_ranges(rtc):
    _, backend, _ = rtc
    (region,) = backend.regions
    assert region.size == 0x1000
    assert region.map_source is not None and region.map_source.offset == 0
    # Every PL031 register is reconciled at event boundaries: nothing keeps the page from
    # being mapped (test_sim_pl031_mapped covers each rule).
    assert region.side_effect_ranges == ()
    assert backend.irq_count == 1 and backend.irq_is_level == (True,)


def test_fifo_model_still_declares_its_side_effect_registers():
    backend = SimulatedBackend(Pl011(ManualClock()))
    covered = {o for start, n in backend.regions[0].side_effect_ranges
               for o in range(start, start + n)}
    assert 0x00 in covered                            # UARTDR pops/pushes a FIFO per access
    assert 0x24 not in covered                        # UARTIBRD: plain storage
    backend.close()


def test_mapping_sees_counter_move_after_ticks(rtc):
    clock, _, mapping = rtc
    assert u32(mapping, Rtc.DR) == 500
    assert u32(mapping, 0xFE0) == 0x31 and u32(mapping, 0xFFC) == 0xB1
    clock.advance(1.0)
    assert u32(mapping, Rtc.DR) == 501
    clock.advance(5.0)
    assert u32(mapping, Rtc.DR) == 506


def test_mapped_storage_write_is_taken_over_at_the_next_tick(rtc):
    clock, backend, mapping = rtc
    irqs = IrqRecorder(backend)
    backend.write(0, Rtc.IMSC, 4, 1)
    assert not backend.mapped_writes_pending
    struct.pack_into("<I", mapping, Rtc.MR, 502)     # a guest writing MR through a mapping
    assert backend.mapped_writes_pending
    clock.advance(1.0)                               # boundary: model takes MR = 502
    assert not backend.mapped_writes_pending
    assert backend.read(0, Rtc.MR, 4) == 502
    assert irqs.take() == []
    clock.advance(1.0)
    assert irqs.take() == [0]
    assert u32(mapping, Rtc.RIS) == 1 and u32(mapping, Rtc.MIS) == 1
    irqs.close()


def test_mapped_write_to_read_only_register_is_undone_at_the_boundary(rtc):
    _, backend, mapping = rtc
    struct.pack_into("<I", mapping, Rtc.DR, 0xDEAD)
    struct.pack_into("<I", mapping, 0x800, 0xBEEF)   # reserved space
    assert backend.read(0, Rtc.RIS, 4) == 0          # any trapped access is a boundary
    assert u32(mapping, Rtc.DR) == 500
    assert u32(mapping, 0x800) == 0


def test_level_line_fires_once_and_again_on_unmask_while_asserted(rtc):
    clock, backend, _ = rtc
    irqs = IrqRecorder(backend, automask=False)
    backend.write(0, Rtc.MR, 4, 501)
    backend.write(0, Rtc.IMSC, 4, 1)
    clock.advance(1.0)
    assert irqs.take() == [0]
    clock.advance(1.0)
    assert irqs.take() == []                          # still asserted: no new report
    backend.mask_irq(0)
    backend.unmask_irq(0)
    assert irqs.take() == [0]                         # unmask of an asserted level line
    backend.mask_irq(0)
    backend.write(0, Rtc.ICR, 4, 1)
    backend.unmask_irq(0)
    assert irqs.take() == []                          # deasserted meanwhile: nothing
    irqs.close()


def test_masked_line_reports_nothing(rtc):
    clock, backend, _ = rtc
    irqs = IrqRecorder(backend, automask=False)
    backend.mask_irq(0)
    backend.write(0, Rtc.MR, 4, 501)
    backend.write(0, Rtc.IMSC, 4, 1)
    clock.advance(3.0)
    assert irqs.take() == []
    assert backend.line(0) and backend.masked(0)
    irqs.close()


class PulseModel(DeviceModel):
    """A one-register edge source: writing 1 to offset 0 emits one pulse."""

    kind = "pulse"
    line_is_level: ClassVar[tuple[bool, ...]] = (False,)

    def write_reg(self, offset: int, value: int, mask: int) -> None:
        if offset == 0 and value & 1:
            self.set_line(0, True)
            self.set_line(0, False)


def test_edge_line_fires_per_edge_and_replays_one_while_masked():
    backend = SimulatedBackend(PulseModel(ManualClock()), 0x1000)
    irqs = IrqRecorder(backend)
    regs = Regs(backend)
    regs[0] = 1
    regs[0] = 1
    assert irqs.take() == [0, 0]                      # edges are never automasked
    backend.mask_irq(0)
    regs[0] = 1
    regs[0] = 1
    assert irqs.take() == []
    backend.unmask_irq(0)
    assert irqs.take() == [0]
    backend.unmask_irq(0)
    assert irqs.take() == []
    irqs.close()
    backend.close()


def test_region_smaller_than_a_page_still_gets_a_whole_page_memfd():
    backend = SimulatedBackend(Pl011(ManualClock()), 0x100)
    assert backend.regions[0].size == 0x100
    assert all(start + n <= 0x100 for start, n in backend.regions[0].side_effect_ranges)
    mapping = mmap.mmap(backend.memfd, mmap.PAGESIZE)
    assert u32(mapping, 0x18) == 0x90                 # UARTFR reset value: TXFE | RXFE
    mapping.close()
    backend.close()


@pytest.mark.parametrize(("region", "offset", "size"), [
    (1, 0, 4), (0, 0x1000, 4), (0, 2, 4), (0, 0, 3), (0, -4, 4), (0, 0xFFC, 8),
])
def test_bad_accesses_are_refused_and_change_nothing(rtc, region, offset, size):
    _, backend, mapping = rtc
    before = bytes(mapping)
    with pytest.raises(HostError):
        backend.read(region, offset, size)
    with pytest.raises(HostError):
        backend.write(region, offset, size, 0xFFFFFFFF)
    assert bytes(mapping) == before


def test_closed_backend_refuses_access_and_stops_timers():
    clock = ManualClock()
    model = Pl031(clock, initial=0)
    backend = SimulatedBackend(model)
    assert clock.pending == 1
    backend.close()
    assert clock.pending == 0
    with pytest.raises(HostError):
        backend.read(0, 0, 4)
    backend.close()                                   # idempotent


def test_a_repeated_quiet_read_is_still_a_boundary_and_still_live(rtc):
    """The backend remembers that a register read has no side effects, not its value:
    a repeated read sees the model move, a mapped write pending before it is still taken
    over (or undone) first, and a closed backend still refuses it."""
    clock, backend, mapping = rtc
    assert backend.read(0, Rtc.DR, 4) == 500          # first read: checked, remembered
    assert backend.read(0, Rtc.DR, 4) == 500
    clock.advance(3.0)
    assert backend.read(0, Rtc.DR, 4) == 503          # the model's value, read now
    struct.pack_into("<I", mapping, Rtc.DR, 0xDEAD)   # a mapped store to a read-only reg
    assert backend.mapped_writes_pending
    assert backend.read(0, Rtc.DR, 4) == 503          # boundary first: the store undone
    assert not backend.mapped_writes_pending and u32(mapping, Rtc.DR) == 503
    struct.pack_into("<I", mapping, Rtc.MR, 777)      # storage: taken over at the read
    assert backend.read(0, Rtc.DR, 4) == 503
    assert backend.read(0, Rtc.MR, 4) == 777
    backend.close()
    with pytest.raises(HostError):
        backend.read(0, Rtc.DR, 4)


def test_a_read_with_side_effects_is_never_taken_as_quiet():
    """UARTDR pops the RX FIFO on every read: each read must reach the model's reader,
    however often it is repeated (UARTFR, beside it, is quiet and live)."""
    clock = ManualClock()
    model = Pl011(clock)
    backend = SimulatedBackend(model)
    backend.write(0, 0x2C, 4, 0x70)      # UARTLCR_H: 8 bits, FIFOs on
    backend.write(0, 0x30, 4, 0x301)     # UARTCR: UARTEN | TXE | RXE
    assert backend.read(0, 0x18, 4) & 0x10 == 0x10                # UARTFR.RXFE: empty
    model.inject_rx(b"abc")
    assert [backend.read(0, 0x18, 4) & 0x10 for _ in range(2)] == [0, 0]  # data waits
    source = backend.regions[0].map_source
    assert source is not None
    mirror = mmap.mmap(source.fd, 4096, offset=source.offset)
    assert [backend.read(0, 0x00, 4) & 0xFF for _ in range(3)] == list(b"abc")
    # Each pop was a model step: its effect was published to the mirror at once.
    assert u32(mirror, 0x18) & 0x10 == 0x10
    assert backend.read(0, 0x18, 4) & 0x10 == 0x10                # empty again
    mirror.close()
    backend.close()
