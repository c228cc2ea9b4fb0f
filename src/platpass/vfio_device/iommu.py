"""The emulated IOMMU: DMA maps are recorded, never used.

VMMs map all guest memory for every VFIO device as a matter of course (QEMU and
cloud-hypervisor issue DMA_MAP before they look at what the device is). platpass only
assigns devices that cannot master the bus, so it accepts those maps, checks them the way
Linux's type1 IOMMU driver does, and remembers them so that DMA_UNMAP can answer with what
was mapped — but it never maps, reads or writes that memory. vfio-user passes an fd with
each map; the caller owns and closes it, this module never sees it.

Rules (type1 and the vfio-user spec agree on these):

* iova and size must be multiples of :data:`IOMMU_PAGE_SIZE`, size non-zero, the end
  must not pass 2**64, and the flags must ask for READ and/or WRITE and nothing else:
  ``EINVAL``.
* A map that overlaps any existing one: ``EEXIST`` (the vfio-user spec's wording).
* More than ``limit`` mappings: ``ENOSPC`` (type1's ``dma_entry_limit``).
* An unmap removes every mapping that lies inside ``[iova, iova+size)``; if the range cuts
  a mapping in two it is refused with ``EINVAL`` (type1 v2 refuses to split a mapping); if
  it holds no mapping at all, ``ENOENT``.
* With ``deny=True`` (``--dma deny``) map and unmap are refused with ``ENOTSUP``.

Every refusal leaves the table unchanged.
"""

from __future__ import annotations

import bisect
import errno
from dataclasses import dataclass

from platpass.errors import VfioError
from platpass.vfio_device.uapi import DmaMapFlags

#: Granule of the emulated IOMMU: 4 KiB, the smallest page any VMM maps with.
IOMMU_PAGE_SIZE = 4096
#: First address past the 64-bit IOVA space.
IOVA_LIMIT = 1 << 64
#: Default for the number of mappings (Linux type1's ``dma_entry_limit`` default).
DEFAULT_LIMIT = 65535


@dataclass(frozen=True, slots=True)
class DmaMapping:
    """One recorded DMA map: ``[iova, iova + size)`` with its access flags."""

    iova: int
    size: int
    flags: DmaMapFlags

    @property
    def end(self) -> int:
        """First IOVA past the mapping."""
        return self.iova + self.size


class EmulatedIommu:
    """A table of DMA mappings with type1's checks; memory itself is never touched."""

    def __init__(self, limit: int = DEFAULT_LIMIT, deny: bool = False) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self.limit = limit
        self.deny = deny
        #: Mappings sorted by iova; ``_starts`` mirrors their iovas for bisect.
        self._mappings: list[DmaMapping] = []
        self._starts: list[int] = []

    @property
    def mappings(self) -> tuple[DmaMapping, ...]:
        """Every recorded mapping, by ascending iova."""
        return tuple(self._mappings)

    def __len__(self) -> int:
        return len(self._mappings)

    def map(self, iova: int, size: int, flags: int) -> DmaMapping:
        """Record a mapping and return it.

        Raises :class:`VfioError` with ENOTSUP (deny policy), EINVAL (alignment, size,
        overflow, flags), EEXIST (overlap) or ENOSPC (limit reached).
        """
        if self.deny:
            raise VfioError(errno.ENOTSUP, "DMA mapping refused: --dma deny")
        self.check_range("DMA_MAP", iova, size)
        known = int(DmaMapFlags.READ | DmaMapFlags.WRITE)
        if int(flags) & ~known or not int(flags) & known:
            raise VfioError(
                errno.EINVAL, f"DMA_MAP flags {flags:#x}: need READ and/or WRITE, nothing else"
            )
        at = bisect.bisect_left(self._starts, iova)
        neighbours = self._mappings[max(at - 1, 0):at + 1]
        for other in neighbours:
            if other.iova < iova + size and iova < other.end:
                raise VfioError(
                    errno.EEXIST,
                    f"DMA_MAP [{iova:#x}, {iova + size:#x}) overlaps "
                    f"[{other.iova:#x}, {other.end:#x})",
                )
        if len(self._mappings) >= self.limit:
            raise VfioError(errno.ENOSPC, f"DMA_MAP: limit of {self.limit} mappings reached")
        mapping = DmaMapping(iova, size, DmaMapFlags(flags))
        self._mappings.insert(at, mapping)
        self._starts.insert(at, iova)
        return mapping

    def unmap(self, iova: int, size: int) -> list[DmaMapping]:
        """Remove every mapping inside ``[iova, iova+size)`` and return them.

        Raises :class:`VfioError` with ENOTSUP (deny policy), EINVAL (bad range, or a
        mapping only partly inside it) or ENOENT (no mapping inside it).
        """
        if self.deny:
            raise VfioError(errno.ENOTSUP, "DMA unmapping refused: --dma deny")
        self.check_range("DMA_UNMAP", iova, size)
        end = iova + size
        first = bisect.bisect_left(self._starts, iova)
        # A mapping that starts before iova but reaches into the range would be split.
        if first > 0 and self._mappings[first - 1].end > iova:
            cut = self._mappings[first - 1]
            raise VfioError(
                errno.EINVAL,
                f"DMA_UNMAP [{iova:#x}, {end:#x}) would split [{cut.iova:#x}, {cut.end:#x})",
            )
        last = bisect.bisect_left(self._starts, end, lo=first)
        if last > first and self._mappings[last - 1].end > end:
            cut = self._mappings[last - 1]
            raise VfioError(
                errno.EINVAL,
                f"DMA_UNMAP [{iova:#x}, {end:#x}) would split [{cut.iova:#x}, {cut.end:#x})",
            )
        if last == first:
            raise VfioError(errno.ENOENT, f"DMA_UNMAP [{iova:#x}, {end:#x}): nothing mapped")
        removed = self._mappings[first:last]
        del self._mappings[first:last]
        del self._starts[first:last]
        return removed

    def clear(self) -> list[DmaMapping]:
        """Forget every mapping (client gone, device closed); returns what was mapped."""
        removed, self._mappings, self._starts = self._mappings, [], []
        return removed

    @staticmethod
    def check_range(what: str, iova: int, size: int) -> None:
        """EINVAL unless ``[iova, iova+size)`` is a non-empty, page-aligned range below
        2**64 (what every map and unmap must be before anything is looked up)."""
        if size <= 0:
            raise VfioError(errno.EINVAL, f"{what}: size {size} must be > 0")
        if iova < 0 or iova % IOMMU_PAGE_SIZE or size % IOMMU_PAGE_SIZE:
            raise VfioError(
                errno.EINVAL,
                f"{what}: iova {iova:#x} and size {size:#x} must be multiples of "
                f"{IOMMU_PAGE_SIZE:#x}",
            )
        if iova + size > IOVA_LIMIT:
            raise VfioError(errno.EINVAL, f"{what}: [{iova:#x}, +{size:#x}) passes 2**64")
