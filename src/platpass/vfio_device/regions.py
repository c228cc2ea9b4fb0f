"""Region layout: which pages of an MMIO region a client may map, and which are trapped.

A page may be mapped into a client (and from there into a guest) only when every byte on
it may be touched freely: the region is page-aligned and owns its pages, the backend can
offer the pages (``map_source``), no driver trap lies on the page (a trapped register must
be seen by platpass on every access, e.g. PL011 ``UARTDMACR``), and no backend
side-effect range does (a register a plain memory mapping cannot model). The other pages
are reached through region reads and writes only.

"Page" means the larger of 4 KiB (the smallest page any guest or VMM maps) and the host's
page size: a mapping must be valid for both.

Pure logic: no fds are opened or mapped here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from platpass.host.backend import MapSource
from platpass.vfio_device.uapi import RegionFlags

#: Granule a mapping must respect: max(4 KiB, host page size) (both powers of two).
MAP_GRANULE = max(4096, os.sysconf("SC_PAGE_SIZE"))


@dataclass(frozen=True, slots=True)
class SparseArea:
    """One mappable window of a region: ``vfio_region_sparse_mmap_area``."""

    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """``struct vfio_region_info`` plus what a transport needs to hand out the mapping.

    ``sparse_areas`` is None when the whole region is mappable (MMAP without a sparse-mmap
    capability) or when none of it is (no MMAP flag); otherwise it lists the mappable
    windows, and ``flags`` carries CAPS. ``map_source`` is set whenever MMAP is.
    """

    index: int
    flags: RegionFlags
    size: int
    sparse_areas: tuple[SparseArea, ...] | None
    map_source: MapSource | None

    @property
    def mappable(self) -> bool:
        """True when at least part of the region may be mapped."""
        return bool(self.flags & RegionFlags.MMAP)


def _pages_touched(offset: int, size: int, granule: int) -> range:
    return range(offset // granule, (offset + size - 1) // granule + 1)


def mappable_areas(size: int, blocked: Iterable[tuple[int, int]],
                   granule: int = MAP_GRANULE) -> tuple[SparseArea, ...]:
    """The windows of a ``size``-byte region left after removing every page that holds a
    byte of a ``blocked`` ``(offset, size)`` range; adjacent pages are merged.

    ``size`` must be a multiple of ``granule``.
    """
    pages = size // granule
    free = [True] * pages
    for offset, length in blocked:
        if length <= 0:
            continue
        for page in _pages_touched(offset, length, granule):
            if 0 <= page < pages:
                free[page] = False
    areas: list[SparseArea] = []
    start: int | None = None
    for page in range(pages + 1):
        if page < pages and free[page]:
            if start is None:
                start = page
        elif start is not None:
            areas.append(SparseArea(start * granule, (page - start) * granule))
            start = None
    return tuple(areas)


def region_info(index: int, *, size: int, address: int | None, map_source: MapSource | None,
                blocked: Iterable[tuple[int, int]], trap_all: bool,
                granule: int = MAP_GRANULE) -> RegionInfo:
    """Build the region info of one region.

    ``address`` is the region's physical address from firmware (None when unknown, e.g. a
    model without a bus address: then only the size decides alignment). ``blocked`` lists
    the driver traps and backend side-effect ranges of this region; ``trap_all`` forbids
    any mapping (a region that shares its pages with another device).
    """
    flags = RegionFlags.READ | RegionFlags.WRITE
    aligned = size > 0 and size % granule == 0 and (address is None or address % granule == 0)
    if trap_all or map_source is None or not aligned:
        return RegionInfo(index, flags, size, None, None)
    areas = mappable_areas(size, blocked, granule)
    if not areas:
        return RegionInfo(index, flags, size, None, None)
    flags |= RegionFlags.MMAP
    if areas == (SparseArea(0, size),):
        return RegionInfo(index, flags, size, None, map_source)
    return RegionInfo(index, flags | RegionFlags.CAPS, size, areas, map_source)
