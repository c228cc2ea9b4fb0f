"""Region info (MMAP, sparse areas) and the routing of region accesses."""

from __future__ import annotations

import errno
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vfio_testbed import LineBackend, QuietDriver, make_node

from platpass.drivers.common import RegisterAccess, Trap
from platpass.errors import VfioError
from platpass.firmware.model import DeviceNode, Trigger
from platpass.host.backend import MapSource
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import MAX_REMEMBERED_ACCESSES, VfioDevice
from platpass.vfio_device.regions import SparseArea, mappable_areas
from platpass.vfio_device.uapi import DeviceFlags, RegionFlags

RW = RegionFlags.READ | RegionFlags.WRITE
P = 4096


def test_mappable_areas_merge_free_pages_and_drop_trapped_ones() -> None:
    assert mappable_areas(4 * P, [], P) == (SparseArea(0, 4 * P),)
    assert mappable_areas(4 * P, [(0x48, 4)], P) == (SparseArea(P, 3 * P),)
    assert mappable_areas(4 * P, [(P + 8, 4), (3 * P, 1)], P) == (
        SparseArea(0, P), SparseArea(2 * P, P))
    # A range crossing a page boundary blocks both pages.
    assert mappable_areas(4 * P, [(2 * P - 2, 4)], P) == (SparseArea(0, P), SparseArea(3 * P, P))
    assert mappable_areas(P, [(0, 1)], P) == ()
    assert mappable_areas(2 * P, [(0, 0)], P) == (SparseArea(0, 2 * P),)


def device(reactor: EpollReactor, *, sizes: tuple[int, ...] = (0x1000,),
           addresses: tuple[int, ...] = (0x9000000,), mappable: bool = True,
           side_effects: tuple[tuple[tuple[int, int], ...], ...] = (),
           force_trap_all: bool = False, compatible: tuple[str, ...] = ("test,line-device",),
           ) -> tuple[VfioDevice, LineBackend]:
    backend = LineBackend(sizes, mappable=mappable, side_effects=side_effects)
    node = make_node(triggers=(Trigger.LEVEL_HIGH,),
                     regions=tuple(zip(addresses, sizes, strict=True)), compatible=compatible)
    return VfioDevice(node, QuietDriver(node), backend, reactor,
                      force_trap_all=force_trap_all), backend


def test_device_flags(reactor: EpollReactor) -> None:
    dev, _ = device(reactor)
    assert dev.info.flags == DeviceFlags.PLATFORM | DeviceFlags.RESET
    assert (dev.info.num_regions, dev.info.num_irqs) == (1, 1)
    amba, _ = device(reactor, compatible=("arm,pl011", "arm,primecell"))
    assert amba.info.flags == DeviceFlags.AMBA | DeviceFlags.RESET


def test_one_page_region_with_a_trap_is_not_mappable(reactor: EpollReactor) -> None:
    dev, _ = device(reactor)
    info = dev.region_info(0)
    assert (info.flags, info.size, info.sparse_areas, info.map_source) == (RW, 0x1000, None, None)


def test_trapped_page_is_left_out_of_the_sparse_areas(reactor: EpollReactor) -> None:
    dev, backend = device(reactor, sizes=(0x1000, 0x3000), addresses=(0x9000000, 0x9010000))
    info = dev.region_info(1)
    assert info.flags == RW | RegionFlags.MMAP
    assert info.sparse_areas is None  # the trap is in region 0 only
    assert info.map_source == backend.regions[1].map_source
    side, _ = device(reactor, sizes=(0x3000,), side_effects=(((0x1010, 4),),))
    # Region 0 has the driver trap at 0x48 (page 0) and a side effect on page 1.
    assert side.region_info(0).sparse_areas == (SparseArea(0x2000, 0x1000),)
    assert side.region_info(0).flags == RW | RegionFlags.MMAP | RegionFlags.CAPS
    assert isinstance(side.region_info(0).map_source, MapSource)


@pytest.mark.parametrize(("why", "kwargs"), [
    ("address not page-aligned", {"sizes": (0x2000,), "addresses": (0x9000800,)}),
    ("size not a page multiple", {"sizes": (0x2800,)}),
    ("backend cannot offer the pages", {"sizes": (0x2000,), "mappable": False}),
    ("shares its pages", {"sizes": (0x2000,), "force_trap_all": True}),
])
def test_regions_that_must_never_be_mapped(reactor: EpollReactor, why: str,
                                           kwargs: dict[str, object]) -> None:
    dev, _ = device(reactor, **kwargs)  # type: ignore[arg-type]
    info = dev.region_info(0)
    assert info.flags == RW, why
    assert (info.sparse_areas, info.map_source) == (None, None), why


def test_region_info_index_is_checked(reactor: EpollReactor) -> None:
    dev, _ = device(reactor)
    for index in (-1, 1):
        with pytest.raises(VfioError) as err:
            dev.region_info(index)
        assert err.value.errno == errno.EINVAL


def test_accesses_of_every_width_reach_the_backend(reactor: EpollReactor) -> None:
    dev, _ = device(reactor)
    dev.write(0, 0x10, 8, 0x1122334455667788)
    assert dev.read(0, 0x10, 1) == 0x88
    assert dev.read(0, 0x12, 2) == 0x5566
    assert dev.read(0, 0x14, 4) == 0x11223344
    assert dev.read(0, 0x10, 8) == 0x1122334455667788
    assert dev.read(0, 0xFF8, 8) == 0  # last aligned word of the region
    assert dev.stats.backend_reads == 5 and dev.stats.trapped_reads == 0


def test_trapped_register_goes_to_the_driver(reactor: EpollReactor) -> None:
    dev, backend = device(reactor)
    backend.write(0, 0x48, 4, 0xDEAD)  # the device itself holds a value there
    backend.log.clear()
    assert dev.read(0, 0x48, 4) == 0  # QuietDriver: reads as zero
    dev.write(0, 0x48, 4, 0x3)  # ignored
    dev.write(0, 0x4A, 1, 0xFF)
    assert backend.log == []
    assert backend.read(0, 0x48, 4) == 0xDEAD
    assert (dev.stats.trapped_reads, dev.stats.trapped_writes) == (1, 2)


def test_access_straddling_a_trap_is_split_at_its_edge(reactor: EpollReactor) -> None:
    dev, backend = device(reactor)
    backend.write(0, 0x40, 8, 0xAAAAAAAA_BBBBBBBB)
    backend.write(0, 0x48, 8, 0xCCCCCCCC_DDDDDDDD)
    backend.log.clear()
    # 0x48..0x4c is trapped, 0x4c..0x50 is not.
    assert dev.read(0, 0x48, 8) == 0xCCCCCCCC_00000000
    dev.write(0, 0x48, 8, 0x11111111_22222222)
    assert backend.read(0, 0x48, 8) == 0x11111111_DDDDDDDD
    assert backend.log == [("read", 0x4C), ("write", 0x4C), ("read", 0x48)]
    assert dev.read(0, 0x40, 8) == 0xAAAAAAAA_BBBBBBBB


@pytest.mark.parametrize(("region", "offset", "size"), [
    (1, 0, 4), (-1, 0, 4),                     # no such region
    (0, 0, 3), (0, 0, 16), (0, 0, 0),          # width
    (0, 2, 4), (0, 4, 8), (0, 1, 2),           # alignment
    (0, 0x1000, 4), (0, 0xFFC, 8), (0, -4, 4),  # outside
])
def test_bad_accesses_are_einval_and_touch_nothing(reactor: EpollReactor, region: int,
                                                   offset: int, size: int) -> None:
    dev, backend = device(reactor)
    backend.log.clear()
    for call in (lambda: dev.read(region, offset, size),
                 lambda: dev.write(region, offset, size, 0)):
        with pytest.raises(VfioError) as err:
            call()
        assert err.value.errno == errno.EINVAL
    assert backend.log == []
    assert dev.stats.refused == 2


def test_write_value_must_fit(reactor: EpollReactor) -> None:
    dev, backend = device(reactor)
    backend.log.clear()
    for value in (0x100, -1):
        with pytest.raises(VfioError) as err:
            dev.write(0, 0x10, 1, value)
        assert err.value.errno == errno.EINVAL
    assert backend.log == []


def test_region_count_must_match_firmware(reactor: EpollReactor) -> None:
    backend = LineBackend((0x1000, 0x1000))
    node = make_node()
    with pytest.raises(VfioError) as err:
        VfioDevice(node, QuietDriver(node), backend, reactor)
    assert err.value.errno == errno.ENODEV


class RecordingDriver(QuietDriver):
    """QuietDriver that also records which bytes reached its trap handlers."""

    traps: ClassVar[tuple[Trap, ...]] = (
        Trap(0, 0x48, 4, "DMACR", "DMA enables"),
        Trap(0, 0x52, 2, "HALF", "a 16-bit trapped register"),
        Trap(0, 0x60, 8, "WIDE", "a 64-bit trapped register"),
    )

    def __init__(self, node: DeviceNode) -> None:
        super().__init__(node)
        self.bytes_seen: set[int] = set()

    def trap_read(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                  size: int) -> int:
        self.bytes_seen.update(range(offset, offset + size))
        return 0

    def trap_write(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                   size: int, value: int) -> None:
        self.bytes_seen.update(range(offset, offset + size))


TRAPPED = {b for t in RecordingDriver.traps for b in range(t.offset, t.offset + t.size)}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(0x30, 0x78), st.booleans())
def test_trapped_bytes_reach_only_the_driver(size: int, offset: int, write: bool) -> None:
    """Whatever the access, a trapped byte never reaches the backend and an untrapped byte
    never reaches the driver; trapped bytes read as zero, the rest read through."""
    offset -= offset % size
    reactor = EpollReactor()
    backend = LineBackend()
    node = make_node()
    driver = RecordingDriver(node)
    dev = VfioDevice(node, driver, backend, reactor)
    try:
        for b in range(0x30, 0x80):
            backend.write(0, b, 1, 0xA0 | (b & 0xF))
        backend.log.clear()
        touched = set(range(offset, offset + size))
        if write:
            dev.write(0, offset, size, (1 << (8 * size)) - 1)
            for b in range(0x30, 0x80):
                expected = 0xFF if b in touched - TRAPPED else 0xA0 | (b & 0xF)
                assert backend.read(0, b, 1) == expected, hex(b)
        else:
            value = dev.read(0, offset, size)
            for i, b in enumerate(sorted(touched)):
                byte = (value >> (8 * i)) & 0xFF
                assert byte == (0 if b in TRAPPED else 0xA0 | (b & 0xF)), hex(b)
        assert driver.bytes_seen == touched & TRAPPED
    finally:
        dev.close()
        reactor.close()


def test_a_repeated_access_takes_the_route_of_the_first(reactor: EpollReactor) -> None:
    """The device remembers each valid access's route (trap, backend or split): the
    second and later accesses must reach exactly what the first reached, and count."""
    backend = LineBackend()
    node = make_node()
    driver = RecordingDriver(node)
    dev = VfioDevice(node, driver, backend, reactor)
    for b in range(0x30, 0x80):
        backend.write(0, b, 1, 0xA0 | (b & 0xF))
    accesses = [(offset, size) for size in (1, 2, 4, 8)
                for offset in range(0x30, 0x80, size)]
    seen = []
    for _round in range(3):
        outcome = []
        for offset, size in accesses:
            backend.log.clear()
            driver.bytes_seen.clear()
            value = dev.read(0, offset, size)
            dev.write(0, offset, size, value)  # write back what was read: nothing moves
            outcome.append((value, list(backend.log), set(driver.bytes_seen)))
        seen.append(outcome)
    assert seen[0] == seen[1] == seen[2]
    assert dev.remembered_accesses == 2 * len(accesses)
    stats = dev.stats
    routed_reads = stats.trapped_reads + stats.backend_reads
    # every access counted each time (a split access counts each of its pieces)
    assert routed_reads >= 3 * len(accesses)
    assert routed_reads == stats.trapped_writes + stats.backend_writes


def test_a_remembered_access_is_still_checked(reactor: EpollReactor) -> None:
    dev, backend = device(reactor)
    dev.write(0, 0x10, 1, 0x5A)
    assert dev.read(0, 0x10, 1) == 0x5A
    backend.log.clear()
    for value in (0x100, -1):  # too wide for the remembered 1-byte access
        with pytest.raises(VfioError) as err:
            dev.write(0, 0x10, 1, value)
        assert err.value.errno == errno.EINVAL
    assert backend.log == []
    dev.close()
    for call in (lambda: dev.read(0, 0x10, 1), lambda: dev.write(0, 0x10, 1, 1)):
        with pytest.raises(VfioError) as err:
            call()
        assert err.value.errno == errno.ENODEV
    assert dev.remembered_accesses == 0


def test_remembered_routes_are_bounded(reactor: EpollReactor) -> None:
    dev, backend = device(reactor, sizes=(0x4000,))
    words = 0x4000 // 4 - 1  # more distinct accesses than the device remembers
    assert words > MAX_REMEMBERED_ACCESSES
    for index in range(1, words):
        if index * 4 != 0x48:
            backend.write(0, index * 4, 4, index)
    for _round in range(2):
        for index in range(1, words):
            expected = 0 if index * 4 == 0x48 else index  # 0x48: QuietDriver's trap
            assert dev.read(0, index * 4, 4) == expected
    assert dev.remembered_accesses == MAX_REMEMBERED_ACCESSES
