"""The emulated IOMMU: type1-style checks, exact bookkeeping, refusals change nothing."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vfio_testbed import LineBackend, QuietDriver, make_node

from platpass.errors import VfioError
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.iommu import IOMMU_PAGE_SIZE, DmaMapping, EmulatedIommu
from platpass.vfio_device.uapi import DmaMapFlags

RW = DmaMapFlags.READ | DmaMapFlags.WRITE
P = IOMMU_PAGE_SIZE


def refused(call: object, code: int, iommu: EmulatedIommu) -> None:
    before = iommu.mappings
    with pytest.raises(VfioError) as err:
        call()  # type: ignore[operator]
    assert err.value.errno == code
    assert iommu.mappings == before


def test_map_and_unmap_exact() -> None:
    iommu = EmulatedIommu()
    mapping = iommu.map(0x100000, 0x20000, RW)
    assert mapping == DmaMapping(0x100000, 0x20000, RW)
    assert iommu.mappings == (mapping,)
    assert iommu.unmap(0x100000, 0x20000) == [mapping]
    assert len(iommu) == 0


@pytest.mark.parametrize(("iova", "size"), [
    (0x100000 - P, 2 * P),      # overlaps the start
    (0x100000 + P, P),          # inside
    (0x10f000, 0x10000),        # overlaps the end
    (0x0, 0x200000),            # covers it
    (0x100000, 0x10000),        # same range
])
def test_overlap_is_eexist(iova: int, size: int) -> None:
    iommu = EmulatedIommu()
    iommu.map(0x100000, 0x10000, RW)
    refused(lambda: iommu.map(iova, size, RW), errno.EEXIST, iommu)


def test_adjacent_maps_are_fine() -> None:
    iommu = EmulatedIommu()
    iommu.map(0x100000, P, RW)
    iommu.map(0x100000 + P, P, DmaMapFlags.READ)
    iommu.map(0x100000 - P, P, DmaMapFlags.WRITE)
    assert [m.iova for m in iommu.mappings] == [0x100000 - P, 0x100000, 0x100000 + P]


@pytest.mark.parametrize(("iova", "size", "flags"), [
    (0x1000, 0, RW),               # zero size
    (0x1001, P, RW),               # unaligned iova
    (0x1000, 0x800, RW),           # unaligned size
    (-P, P, RW),                   # negative
    ((1 << 64) - P, 2 * P, RW),    # passes 2**64
    (0x1000, P, 0),                # no access
    (0x1000, P, RW | 4),           # unknown flag
])
def test_bad_map_is_einval(iova: int, size: int, flags: int) -> None:
    iommu = EmulatedIommu()
    iommu.map(0x100000, P, RW)
    refused(lambda: iommu.map(iova, size, flags), errno.EINVAL, iommu)


def test_top_of_the_iova_space_maps() -> None:
    iommu = EmulatedIommu()
    iommu.map((1 << 64) - P, P, RW)
    assert iommu.unmap((1 << 64) - P, P)[0].end == 1 << 64


def test_limit_is_enospc() -> None:
    iommu = EmulatedIommu(limit=2)
    iommu.map(0, P, RW)
    iommu.map(P, P, RW)
    refused(lambda: iommu.map(2 * P, P, RW), errno.ENOSPC, iommu)
    iommu.unmap(0, P)
    iommu.map(2 * P, P, RW)


def test_deny_is_enotsup() -> None:
    iommu = EmulatedIommu(deny=True)
    refused(lambda: iommu.map(0, P, RW), errno.ENOTSUP, iommu)
    refused(lambda: iommu.unmap(0, P), errno.ENOTSUP, iommu)


def test_unmap_rules() -> None:
    iommu = EmulatedIommu()
    a = iommu.map(0x10000, 0x2000, RW)
    b = iommu.map(0x20000, 0x1000, RW)
    refused(lambda: iommu.unmap(0x40000, P), errno.ENOENT, iommu)    # nothing there
    refused(lambda: iommu.unmap(0x13000, P), errno.ENOENT, iommu)    # in a hole
    refused(lambda: iommu.unmap(0x11000, P), errno.EINVAL, iommu)    # second half of a
    refused(lambda: iommu.unmap(0x10000, P), errno.EINVAL, iommu)    # first half of a
    refused(lambda: iommu.unmap(0x0, 0x11000), errno.EINVAL, iommu)  # cuts a's end
    refused(lambda: iommu.unmap(0x10000, 0), errno.EINVAL, iommu)
    refused(lambda: iommu.unmap(0x10800, P), errno.EINVAL, iommu)
    # A range holding whole mappings removes them all (type1), and returns them.
    assert iommu.unmap(0x0, 0x100000) == [a, b]
    assert iommu.clear() == []


def test_clear_returns_what_was_mapped() -> None:
    iommu = EmulatedIommu()
    maps = [iommu.map(i * 2 * P, P, RW) for i in range(5)]
    assert iommu.clear() == maps
    assert len(iommu) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 31), st.integers(0, 8)), max_size=40))
def test_table_matches_a_page_model(ops: list[tuple[bool, int, int]]) -> None:
    """Against a page-by-page model: maps never overlap, unmaps return exactly what a
    whole-mapping range holds, and every refusal leaves the table as it was."""
    iommu = EmulatedIommu(limit=6)
    owner: dict[int, tuple[int, int]] = {}  # page -> (iova, size) of its mapping
    for is_map, page, pages in ops:
        iova, size = page * P, pages * P
        before = iommu.mappings
        try:
            if is_map:
                iommu.map(iova, size, RW)
                for p in range(page, page + pages):
                    assert p not in owner
                    owner[p] = (iova, size)
            else:
                removed = iommu.unmap(iova, size)
                expected = sorted({owner[p] for p in range(page, page + pages) if p in owner})
                assert [(m.iova, m.size) for m in removed] == expected
                for m in removed:
                    assert page <= m.iova // P and m.end <= iova + size
                    for p in range(m.iova // P, m.end // P):
                        del owner[p]
        except VfioError as err:
            assert iommu.mappings == before
            assert err.errno in (errno.EINVAL, errno.EEXIST, errno.ENOSPC, errno.ENOENT)
        covered = {p for m in iommu.mappings for p in range(m.iova // P, m.end // P)}
        assert covered == set(owner)


def test_device_dma_calls_use_its_iommu_and_count() -> None:
    reactor = EpollReactor()
    node = make_node()
    denied = VfioDevice(node, QuietDriver(node), LineBackend(), reactor,
                        EmulatedIommu(deny=True))
    device = VfioDevice(node, QuietDriver(node), LineBackend(), reactor)
    try:
        with pytest.raises(VfioError) as err:
            denied.dma_map(0, P, RW)
        assert err.value.errno == errno.ENOTSUP
        first = device.dma_map(0x40000000, 0x100000, RW)
        second = device.dma_map(0x40100000, P, DmaMapFlags.READ)
        assert device.dma_unmap(0x40000000, 0x101000) == [first, second]
        assert (device.stats.dma_maps, device.stats.dma_unmaps) == (2, 2)
        device.dma_map(0x0, P, RW)
        device.close()
        assert len(device.iommu) == 0  # close forgets every map
        with pytest.raises(VfioError) as err:
            device.dma_map(0x0, P, RW)
        assert err.value.errno == errno.ENODEV
    finally:
        denied.close()
        device.close()
        reactor.close()
