"""Only pages a client can map are watched for stores at event boundaries.

The page check runs at every trapped access, so a device none of whose pages the VFIO layer
offers must not pay for it (``page_checks`` stays 0), while a page it does offer keeps
every guarantee: storage writes taken over, stores to reserved and read-only words undone.
The VFIO layer's own answer (``region_info``) is the reference for what can be mapped.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from typing import ClassVar

import pytest
from sim_helpers import IrqRecorder

from platpass.drivers.registry import default_registry
from platpass.errors import HostError
from platpass.host.simulated import ManualClock, SimulatedBackend
from platpass.host.simulated.backend import PAGE_SIZE, mappable_pages
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.host.simulated.models.base import DeviceModel, merge
from platpass.host.simulated.models.pl011 import Pl011
from platpass.host.simulated.models.pl011 import Reg as Uart
from platpass.host.simulated.models.pl031 import Pl031
from platpass.host.simulated.models.pl031 import Reg as Rtc
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice

pytestmark = pytest.mark.skipif(PAGE_SIZE != 0x1000, reason="layouts below assume 4 KiB pages")


def u32(mapping: mmap.mmap, offset: int) -> int:
    return struct.unpack_from("<I", mapping, offset)[0]


def store(mapping: mmap.mmap, offset: int, value: int) -> None:
    """A guest store through the mapped page (no boundary)."""
    struct.pack_into("<I", mapping, offset, value)


def test_mappable_pages_are_whole_pages_without_a_side_effect_byte() -> None:
    assert mappable_pages(0x1000, ()) == ((0, 0x1000),)
    assert mappable_pages(0x1000, ((0xFFF, 1),)) == ()
    assert mappable_pages(0x3000, ((0x1000, 4),)) == ((0, 0x1000), (0x2000, 0x1000))
    assert mappable_pages(0x3000, ((0xFFC, 8),)) == ((0x2000, 0x1000),)   # straddles 0/1
    assert mappable_pages(0x2000, ((0, 0x20),)) == ((0x1000, 0x1000),)
    assert mappable_pages(0x1800, ()) == ((0, 0x1000),)        # the partial page: never
    assert mappable_pages(0x100, ()) == ()
    assert mappable_pages(0x2000, ((0x10, 0),)) == ((0, 0x2000),)


@pytest.fixture
def board_devices() -> Iterator[list[tuple[str, VfioDevice, SimulatedBackend]]]:
    board = load_board()
    reactor = EpollReactor()
    opened: list[tuple[str, VfioDevice, SimulatedBackend]] = []
    for node in board.devices():
        driver = default_registry(plugins=False).match(node.compatible)
        if driver is None:
            continue
        try:
            backend = open_sim_backend(node, reactor, ManualClock())
        except HostError:
            continue                              # no model for it (bus masters etc.)
        device = VfioDevice(node, driver(node), backend, reactor)
        device.open()
        opened.append((node.path, device, backend))
    yield opened
    for _, device, _ in opened:
        device.close()
    reactor.close()


def test_backend_watches_every_page_the_vfio_layer_offers(board_devices) -> None:
    """Every board device: what ``region_info`` lets a client map lies inside the pages
    the backend watches; only the PL031 has any."""
    watching = set()
    for path, device, backend in board_devices:
        info = device.region_info(0)
        if not info.mappable:
            areas: tuple[tuple[int, int], ...] = ()
        elif info.sparse_areas is None:
            areas = ((0, info.size),)
        else:
            areas = tuple((a.offset, a.size) for a in info.sparse_areas)
        for offset, size in areas:
            assert any(start <= offset and offset + size <= start + length
                       for start, length in backend.mappable_pages), (path, offset, size)
        if backend.mappable_pages:
            watching.add(backend.model.kind)
    assert watching == {"pl031"}
    assert {b.model.kind for _, _, b in board_devices} >= {
        "pl011", "pl031", "pl061", "sp805", "ns16550"}


def test_devices_without_a_mappable_page_never_compare_it(board_devices) -> None:
    """Trapped reads and writes of every word, ticks and unmasks: no page check at all for
    the devices whose only page holds side-effect registers; one per boundary for the
    PL031."""
    for path, device, backend in board_devices:
        clock = backend.model.clock
        assert isinstance(clock, ManualClock)
        width = backend.model.reg_width
        for offset in range(0, 0x40, width):
            device.read(0, offset, width)
        device.write(0, 0x3C if width == 4 else 0x7, width, 0)   # a plain register write
        clock.advance(2.5)
        for index in range(backend.irq_count):
            backend.unmask_irq(index)
        if backend.model.kind == "pl031":
            assert backend.page_checks >= 0x40 // width + 1, path
        else:
            assert backend.mappable_pages == () and backend.page_checks == 0, path


def test_pl031_reserved_and_read_only_stores_are_still_undone() -> None:
    clock = ManualClock()
    backend = SimulatedBackend(Pl031(clock, initial=700))
    irqs = IrqRecorder(backend)
    page = mmap.mmap(backend.memfd, 0x1000)
    try:
        assert backend.mappable_pages == ((0, 0x1000),)
        before = backend.page_checks
        for offset in (0x020, 0x400, 0xFDC, 0xFFC, Rtc.DR, Rtc.RIS):
            original = u32(page, offset)
            store(page, offset, 0x5A5A_5A5A)
            store(page, Rtc.MR, 9000 + offset)              # a storage write beside it
            assert backend.mapped_writes_pending
            assert backend.read(0, Rtc.CR, 4) == 1          # the boundary
            assert u32(page, offset) == original, hex(offset)
            assert backend.model.mr == 9000 + offset == u32(page, Rtc.MR)
            assert not backend.mapped_writes_pending
        store(page, 0x800, 1)
        clock.advance(1.0)                                  # a tick is a boundary too
        assert u32(page, 0x800) == 0 and u32(page, Rtc.DR) == 701
        assert backend.page_checks > before
    finally:
        page.close()
        irqs.close()
        backend.close()


def test_two_page_uart_watches_only_its_second_page() -> None:
    """A PL011 in a 0x2000 region: page 1 (reserved space) is offered for mapping, so a
    store there is undone; page 0 (side-effect registers) is never offered, so the backend
    does not look at it - a store someone makes there anyway is not taken over."""
    backend = SimulatedBackend(Pl011(ManualClock()), 0x2000)
    mapping = mmap.mmap(backend.memfd, 0x2000)
    try:
        assert backend.mappable_pages == ((0x1000, 0x1000),)
        store(mapping, 0x1000, 0xDEAD)
        store(mapping, 0x1FFC, 0xBEEF)
        assert backend.mapped_writes_pending
        backend.read(0, Uart.FR, 4)
        assert (u32(mapping, 0x1000), u32(mapping, 0x1FFC)) == (0, 0)
        ibrd = backend.read(0, Uart.IBRD, 4)
        store(mapping, Uart.IBRD, ibrd + 5)                 # page 0: nobody maps it
        assert not backend.mapped_writes_pending
        backend.read(0, Uart.FR, 4)
        assert backend.read(0, Uart.IBRD, 4) == ibrd
    finally:
        mapping.close()
        backend.close()


class SplitModel(DeviceModel):
    """Three pages, a side-effect register on the middle one, storage on the outer ones."""

    kind = "split"
    size = 0x3000
    side_effect_ranges: ClassVar[tuple[tuple[int, int], ...]] = ((0x1000, 4),)
    storage_offsets = frozenset({0x0000, 0x2000})

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock)
        self.regs = {0x0000: 0, 0x1000: 0, 0x2000: 0}
        for offset in self.regs:
            self.peekers[offset] = lambda o=offset: self.regs[o]
            self.writers[offset] = lambda value, mask, o=offset: self._store(o, value, mask)

    def _store(self, offset: int, value: int, mask: int) -> None:
        self.regs[offset] = merge(self.regs[offset], value, mask)


def test_each_run_of_mappable_pages_is_watched() -> None:
    """Two separate runs: a store in either is seen (taken over or undone); the middle
    page, which can never be mapped, is not compared."""
    backend = SimulatedBackend(SplitModel(ManualClock()))
    mapping = mmap.mmap(backend.memfd, 0x3000)
    model = backend.model
    assert isinstance(model, SplitModel)
    try:
        assert backend.mappable_pages == ((0, 0x1000), (0x2000, 0x1000))
        for run, reserved in ((0x0000, 0x0800), (0x2000, 0x2FFC)):
            store(mapping, run, 0x11 + run)
            store(mapping, reserved, 0x22)
            assert backend.mapped_writes_pending
            backend.read(0, 0x1000, 4)
            assert model.regs[run] == 0x11 + run == u32(mapping, run)
            assert u32(mapping, reserved) == 0
            assert not backend.mapped_writes_pending
        store(mapping, 0x1800, 0x33)                        # the never-mapped page
        assert not backend.mapped_writes_pending
    finally:
        mapping.close()
        backend.close()
