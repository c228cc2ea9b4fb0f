"""Guest address and SPI allocation, and the placement record the KVM client reads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.errors import GuestError
from platpass.firmware.model import DeviceNode, Interrupt, IrqType, MmioRange, Trigger
from platpass.guest.placement import (
    AddressRange,
    Allocator,
    GuestPlacement,
    SpiPool,
    new_record,
)


def device(path: str, regions: list[tuple[int, int]], spis: list[int] = (),
           trigger: Trigger = Trigger.LEVEL_HIGH, irq_type: IrqType = IrqType.SPI) -> DeviceNode:
    return DeviceNode(
        path=path, compatible=("x,y",), status="okay", is_mmio=True,
        regions=tuple(MmioRange(a, s) for a, s in regions),
        interrupts=tuple(Interrupt("/gic", (0, n, 4), irq_type, n, trigger) for n in spis),
    )


def test_sub_page_offset_is_kept_and_pages_do_not_overlap() -> None:
    alloc = Allocator(new_record(window=AddressRange(0x1000_0000, 0x10_000)))
    a = alloc.place(device("/a@ff1a0400", [(0xFF1A0400, 0x100)], [55]))
    b = alloc.place(device("/b@ff1b0000", [(0xFF1B0000, 0x2000)], [56]))
    assert a.regions[0].guest_address == 0x1000_0400
    assert b.regions[0].guest_address == 0x1000_1000
    assert a.interrupts[0].guest_spi == 112 and b.interrupts[0].guest_spi == 113


def test_regions_sharing_a_page_keep_their_layout() -> None:
    alloc = Allocator(new_record())
    p = alloc.place(device("/d@100", [(0x100, 0x40), (0x800, 0x40), (0x5000, 0x10)]))
    g = [r.guest_address for r in p.regions]
    assert g[1] - g[0] == 0x700
    assert g[0] % 0x1000 == 0x100 and g[2] % 0x1000 == 0
    assert g[2] // 0x1000 != g[0] // 0x1000


def test_reserved_ranges_and_window_exhaustion() -> None:
    rec = new_record(window=AddressRange(0x0, 0x3000))
    alloc = Allocator(rec, reserved=[AddressRange(0x0, 0x1800)])
    p = alloc.place(device("/a@0", [(0x4000_0000, 0x1000)]))
    assert p.regions[0].guest_address == 0x2000
    with pytest.raises(GuestError, match="no free 0x1000 bytes"):
        alloc.place(device("/b@0", [(0x5000_0000, 0x10)]))


def test_spi_pool_exhaustion_and_ppi_refusal() -> None:
    alloc = Allocator(new_record(spi_pool=SpiPool(40, 1)))
    alloc.place(device("/a@0", [(0x1000, 0x10)], [3]))
    with pytest.raises(GuestError, match=r"pool 40\.\.40 is exhausted"):
        alloc.place(device("/b@0", [(0x2000, 0x10)], [4]))
    with pytest.raises(GuestError, match="per-CPU PPI"):
        Allocator(new_record()).place(device("/c@0", [(0x3000, 0x10)], [9],
                                             irq_type=IrqType.PPI))


def test_guest_trigger_keeps_type_with_gic_polarity() -> None:
    alloc = Allocator(new_record())
    low = alloc.place(device("/a@0", [(0x1000, 0x10)], [3], Trigger.LEVEL_LOW))
    fall = alloc.place(device("/b@0", [(0x2000, 0x10)], [4], Trigger.EDGE_FALLING))
    assert low.interrupts[0].guest_trigger is Trigger.LEVEL_HIGH
    assert low.interrupts[0].host_trigger is Trigger.LEVEL_LOW
    assert fall.interrupts[0].guest_trigger is Trigger.EDGE_RISING
    with pytest.raises(GuestError, match="unknown"):
        alloc.place(device("/c@0", [(0x3000, 0x10)], [5], Trigger.UNKNOWN))


def test_identity_placement_keeps_host_spis_and_refuses_sharing() -> None:
    alloc = Allocator(new_record())
    p = alloc.place(device("/a@0", [(0x1000, 0x10)], [77], Trigger.LEVEL_LOW), identity=True)
    assert p.interrupts[0].guest_spi == 77
    assert p.interrupts[0].guest_trigger is Trigger.LEVEL_LOW
    with pytest.raises(GuestError, match="already given"):
        alloc.place(device("/b@0", [(0x2000, 0x10)], [77]), identity=True)


def test_record_round_trip_and_reuse() -> None:
    alloc = Allocator(new_record())
    node = device("/a@ff1a0400", [(0xFF1A0400, 0x100)], [55])
    first = alloc.place(node)
    text = alloc.record.to_json()
    again = GuestPlacement.from_json(text)
    assert again == alloc.record
    second = Allocator(again)
    assert second.place(node) == first
    other = second.place(device("/b@0", [(0x1000, 0x10)], [1]))
    assert other.regions[0].guest_pages().base != first.regions[0].guest_pages().base
    assert other.interrupts[0].guest_spi != first.interrupts[0].guest_spi


def test_record_for_other_registers_is_refused() -> None:
    alloc = Allocator(new_record())
    alloc.place(device("/a@0", [(0x1000, 0x10)]))
    with pytest.raises(GuestError, match="other registers"):
        Allocator(alloc.record).place(device("/a@0", [(0x1000, 0x20)]))


@pytest.mark.parametrize("text", [
    "", "[]", "{}", '{"platpass_guest_placement": 2}',
    '{"platpass_guest_placement": 1, "page_size": 4096}',
    '{"platpass_guest_placement": 1, "page_size": 3, "window": {"base": 0, "size": 1},'
    ' "spi_pool": {"start": 0, "count": 1}, "devices": []}',
    '{"platpass_guest_placement": 1, "page_size": 4096, "window": {"base": 0, "size": 1},'
    ' "spi_pool": {"start": 0, "count": 1}, "devices": [{"host_path": "/x"}]}',
])
def test_malformed_records_are_refused(text: str) -> None:
    with pytest.raises(GuestError):
        GuestPlacement.from_json(text)


@pytest.mark.parametrize("text", ["1", "a:b", "0x1000:0", "-1:5", "1:2:3"])
def test_bad_ranges_are_refused(text: str) -> None:
    with pytest.raises(GuestError):
        AddressRange.parse(text)


regions_st = st.lists(
    st.tuples(st.integers(0, 0xFFFF_F000), st.integers(1, 0x3000)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(st.lists(regions_st, min_size=1, max_size=6))
def test_allocations_are_disjoint_aligned_and_in_window(devices: list) -> None:
    window = AddressRange(0x1000_0000, 0x100_0000)
    alloc = Allocator(new_record(window=window), reserved=[AddressRange(0x1000_2000, 0x800)])
    pages: list[AddressRange] = []
    for n, regions in enumerate(devices):
        p = alloc.place(device(f"/d{n}@0", regions))
        mine: set[tuple[int, int]] = set()
        for r in p.regions:
            assert r.guest_address % 0x1000 == r.host_address % 0x1000
            span = r.guest_pages()
            assert window.base <= span.base and span.end <= window.end
            assert not span.overlaps(AddressRange(0x1000_2000, 0x800))
            mine.add((span.base, span.size))
        for base, size in mine:
            span = AddressRange(base, size)
            assert not any(span.overlaps(other) for other in pages)
        pages.extend(AddressRange(b, s) for b, s in mine)


def test_labels_are_unique_across_buses() -> None:
    alloc = Allocator(new_record())
    a = alloc.place(device("/bus@1/serial@100", [(0x1000_0100, 0x100)]))
    b = alloc.place(device("/bus@2/serial@100", [(0x2000_0100, 0x100)]))
    c = alloc.place(device("/bus@3/serial@100", [(0x1000_0100, 0x100)]))
    assert (a.label, b.label) == ("serial_10000100", "serial_20000100")
    assert c.label == "serial_10000100_2"
