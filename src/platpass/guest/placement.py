"""Where an assigned device lives in the guest: guest addresses and SPIs, allocated once and
recorded, so the server, the KVM client and the guest device tree always agree.

The record (:class:`GuestPlacement`) is a small JSON document. Region ``i`` and interrupt
``i`` of a device are the VFIO region and IRQ index ``i`` of the same device (one region per
``reg`` entry, one IRQ per interrupt, as the VFIO device layer numbers them).

Guest addresses keep each register block's offset within its page: a UART at host
``0xff1a0400`` lands at ``guest_page + 0x400``. A VMM maps (or traps) whole host pages, so the
guest's view of a sub-page device only lines up with what the VFIO region exposes when the
in-page offset is preserved. Regions of one device whose pages touch or overlap are placed
together, keeping their relative layout.

Interrupt polarity: a guest GIC only takes SPIs as level-high or rising-edge, and VFIO
delivers "the line fired" events that the VMM raises as such. The guest trigger therefore
keeps the host's *type* (level or edge, which decides VFIO automasking) with the GIC's
polarity; the host trigger is recorded beside it. Xen, which hands the physical line through
unchanged, uses the host's SPI number and trigger as they are (``identity`` placement).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from platpass.errors import GuestError
from platpass.firmware.model import DeviceNode, IrqType, Trigger

#: Record format version written to and required from JSON.
FORMAT_VERSION = 1
DEFAULT_PAGE_SIZE = 0x1000
#: QEMU ``virt``'s platform-bus window (free when no dynamic sysbus device is plugged), which
#: is also where the platpass KVM client puts assigned devices.
DEFAULT_WINDOW_BASE = 0x0C00_0000
DEFAULT_WINDOW_SIZE = 0x0200_0000
#: QEMU ``virt``'s platform-bus SPIs (112..175).
DEFAULT_SPI_START = 112
DEFAULT_SPI_COUNT = 64
#: Highest SPI number a GICv2/v3 can have (INTID 1019 - 32).
MAX_SPI = 987


@dataclass(frozen=True, slots=True)
class AddressRange:
    """``[base, base + size)`` in guest physical address space."""

    base: int
    size: int

    @property
    def end(self) -> int:
        """First address past the range."""
        return self.base + self.size

    def overlaps(self, other: AddressRange) -> bool:
        """True when the two ranges share at least one byte."""
        return self.base < other.end and other.base < self.end

    @classmethod
    def parse(cls, text: str) -> AddressRange:
        """``BASE:SIZE`` (numbers in any Python base, e.g. ``0xc000000:0x2000000``)."""
        try:
            base_text, size_text = text.split(":")
            base, size = int(base_text, 0), int(size_text, 0)
        except ValueError as err:
            raise GuestError(f"bad range {text!r}: expected BASE:SIZE") from err
        if base < 0 or size <= 0 or base + size > 1 << 64:
            raise GuestError(f"bad range {text!r}: empty, negative or beyond 64 bits")
        return cls(base, size)


@dataclass(frozen=True, slots=True)
class SpiPool:
    """Guest SPI numbers ``start .. start + count - 1`` (GIC SPI numbers, not INTIDs)."""

    start: int
    count: int

    @classmethod
    def parse(cls, text: str) -> SpiPool:
        """``START:COUNT``."""
        try:
            start_text, count_text = text.split(":")
            start, count = int(start_text, 0), int(count_text, 0)
        except ValueError as err:
            raise GuestError(f"bad SPI pool {text!r}: expected START:COUNT") from err
        if start < 0 or count <= 0 or start + count - 1 > MAX_SPI:
            raise GuestError(f"bad SPI pool {text!r}: SPIs run from 0 to {MAX_SPI}")
        return cls(start, count)


def guest_trigger(host: Trigger) -> Trigger:
    """The trigger a guest GIC SPI gets for a host line (see the module docstring)."""
    if host.is_level:
        return Trigger.LEVEL_HIGH
    if host in (Trigger.EDGE_RISING, Trigger.EDGE_FALLING, Trigger.EDGE_BOTH):
        return Trigger.EDGE_RISING
    raise GuestError(f"interrupt trigger type {host} is unknown; cannot describe it to a guest")


@dataclass(frozen=True, slots=True)
class RegionPlacement:
    """Region ``index`` (host ``reg`` entry) at ``guest_address`` (same in-page offset)."""

    index: int
    host_address: int
    size: int
    guest_address: int

    def guest_pages(self, page_size: int = DEFAULT_PAGE_SIZE) -> AddressRange:
        """The whole guest pages the region touches (what a VMM maps or traps)."""
        start = self.guest_address - self.guest_address % page_size
        end = -(-(self.guest_address + self.size) // page_size) * page_size
        return AddressRange(start, end - start)

    def host_pages(self, page_size: int = DEFAULT_PAGE_SIZE) -> AddressRange:
        """The whole host pages the region touches."""
        start = self.host_address - self.host_address % page_size
        end = -(-(self.host_address + self.size) // page_size) * page_size
        return AddressRange(start, end - start)


@dataclass(frozen=True, slots=True)
class InterruptPlacement:
    """Interrupt ``index`` delivered to the guest as SPI ``guest_spi``."""

    index: int
    host_controller: str
    host_type: IrqType
    host_number: int
    host_trigger: Trigger
    guest_spi: int
    guest_trigger: Trigger


@dataclass(frozen=True, slots=True)
class DevicePlacement:
    """Everything the guest-side parties must agree on for one assigned device."""

    host_path: str
    label: str
    regions: tuple[RegionPlacement, ...]
    interrupts: tuple[InterruptPlacement, ...]

    @property
    def guest_address(self) -> int:
        """Guest address of region 0 (the node's unit address); 0 for a device with none."""
        return self.regions[0].guest_address if self.regions else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "host_path": self.host_path,
            "label": self.label,
            "regions": [
                {"index": r.index, "host_address": r.host_address, "size": r.size,
                 "guest_address": r.guest_address}
                for r in self.regions
            ],
            "interrupts": [
                {"index": i.index, "host_controller": i.host_controller,
                 "host_type": str(i.host_type), "host_number": i.host_number,
                 "host_trigger": str(i.host_trigger), "guest_spi": i.guest_spi,
                 "guest_trigger": str(i.guest_trigger)}
                for i in self.interrupts
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DevicePlacement:
        """Inverse of :meth:`to_dict`; raises :class:`GuestError` on a malformed record."""
        try:
            regions = tuple(
                RegionPlacement(int(r["index"]), int(r["host_address"]), int(r["size"]),
                                int(r["guest_address"]))
                for r in data["regions"]
            )
            interrupts = tuple(
                InterruptPlacement(int(i["index"]), str(i["host_controller"]),
                                   IrqType(i["host_type"]), int(i["host_number"]),
                                   Trigger(i["host_trigger"]), int(i["guest_spi"]),
                                   Trigger(i["guest_trigger"]))
                for i in data["interrupts"]
            )
            return cls(str(data["host_path"]), str(data["label"]), regions, interrupts)
        except (KeyError, TypeError, ValueError) as err:
            raise GuestError(f"malformed device placement record: {err!r}") from err


@dataclass(frozen=True, slots=True)
class GuestPlacement:
    """The placement record of every device assigned to one guest."""

    page_size: int
    window: AddressRange
    spi_pool: SpiPool
    devices: tuple[DevicePlacement, ...] = ()

    def device(self, host_path: str) -> DevicePlacement | None:
        """The placement of ``host_path``, if recorded."""
        for device in self.devices:
            if device.host_path == host_path:
                return device
        return None

    def with_device(self, placement: DevicePlacement) -> GuestPlacement:
        """A record with ``placement`` added (or replacing the same host path)."""
        others = tuple(d for d in self.devices if d.host_path != placement.host_path)
        return GuestPlacement(self.page_size, self.window, self.spi_pool, (*others, placement))

    def to_json(self) -> str:
        """The record as JSON text (numbers as JSON integers)."""
        return json.dumps({
            "platpass_guest_placement": FORMAT_VERSION,
            "page_size": self.page_size,
            "window": {"base": self.window.base, "size": self.window.size},
            "spi_pool": {"start": self.spi_pool.start, "count": self.spi_pool.count},
            "devices": [d.to_dict() for d in self.devices],
        }, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> GuestPlacement:
        """Parse a record; raises :class:`GuestError` on anything malformed."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as err:
            raise GuestError(f"placement record is not JSON: {err}") from err
        except RecursionError as err:
            raise GuestError("placement record is not JSON: nested too deeply") from err
        if not isinstance(data, dict) or data.get("platpass_guest_placement") != FORMAT_VERSION:
            raise GuestError("not a platpass guest placement record (version "
                             f"{FORMAT_VERSION} expected)")
        try:
            page_size = int(data["page_size"])
            window = AddressRange(int(data["window"]["base"]), int(data["window"]["size"]))
            pool = SpiPool(int(data["spi_pool"]["start"]), int(data["spi_pool"]["count"]))
            devices = tuple(DevicePlacement.from_dict(d) for d in data["devices"])
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise GuestError(f"malformed placement record: {err!r}") from err
        if page_size <= 0 or page_size & (page_size - 1):
            raise GuestError(f"placement record page size {page_size} is not a power of two")
        return cls(page_size, window, pool, devices)


def unique_label(label: str, taken: set[str] | frozenset[str]) -> str:
    """``label``, or ``label_2``, ``label_3``... when it is taken."""
    unique, n = label, 1
    while unique in taken:
        n += 1
        unique = f"{label}_{n}"
    return unique


def default_label(node: DeviceNode) -> str:
    """The guest label of a host node: its name and CPU address, e.g. ``serial_ff1a0000``
    (the CPU address, not the bus-local unit address, so nodes on two buses never clash)."""
    from platpass.guest.dts import label_for

    base = node.name.split("@", 1)[0]
    if node.regions:
        return label_for(f"{base}_{node.regions[0].address:x}")
    return label_for(node.name.replace("@", "_"))


class Allocator:
    """Hands out guest pages from a window and SPIs from a pool, around what is taken.

    Seeded with an existing record (devices already placed keep their placement) and with
    reserved ranges (e.g. the guest board's own devices); never overlaps either.
    """

    def __init__(self, record: GuestPlacement, *,
                 reserved: Iterable[AddressRange] = (),
                 reserved_spis: Iterable[int] = ()) -> None:
        ps = record.page_size
        if ps <= 0 or ps & (ps - 1):
            raise GuestError(f"page size {ps} is not a power of two")
        if record.window.base % ps or record.window.size % ps:
            raise GuestError(f"guest MMIO window {record.window.base:#x}+{record.window.size:#x}"
                             f" is not aligned to the {ps:#x} page size")
        self.record = record
        self._reserved = list(reserved)
        self._taken: list[AddressRange] = []
        self._spis: set[int] = set(reserved_spis)
        for device in record.devices:
            self._take_device(device)

    def _take_device(self, device: DevicePlacement) -> None:
        for region in device.regions:
            self._taken.append(region.guest_pages(self.record.page_size))
        for irq in device.interrupts:
            self._spis.add(irq.guest_spi)

    def place(self, node: DeviceNode, *, label: str | None = None,
              identity: bool = False,
              trigger_hints: Mapping[str, Trigger] | None = None) -> DevicePlacement:
        """The placement of ``node``: the recorded one if any, else a new one (recorded).

        ``identity`` keeps the host SPI numbers (Xen passes physical lines through 1:1).
        ``trigger_hints`` gives, per interrupt controller path, the trigger of lines whose
        specifier does not say (e.g. a TI K3 interrupt router's ``ti,intr-trigger-type``).
        Raises :class:`GuestError` when the window or the pool is exhausted, or an interrupt
        cannot be given to a guest (a per-CPU PPI, an unknown trigger type).
        """
        existing = self.record.device(node.path)
        if existing is not None:
            self._check_matches(node, existing, identity)
            return existing
        regions = self._place_regions(node)
        interrupts = self._place_interrupts(node, identity, trigger_hints or {})
        unique = unique_label(label or default_label(node),
                              {d.label for d in self.record.devices})
        placement = DevicePlacement(node.path, unique, regions, interrupts)
        self.record = self.record.with_device(placement)
        self._take_device(placement)
        return placement

    def _check_matches(self, node: DeviceNode, existing: DevicePlacement,
                       identity: bool) -> None:
        host = [(r.address, r.size) for r in node.regions]
        recorded = [(r.host_address, r.size) for r in existing.regions]
        if host != recorded or len(node.interrupts) != len(existing.interrupts):
            raise GuestError(f"{node.path}: the placement record describes other registers or "
                             "interrupts than the device tree does; remove its entry to re-place")
        if identity:
            for irq, placed in zip(node.interrupts, existing.interrupts, strict=True):
                if placed.guest_spi != irq.number:
                    raise GuestError(f"{node.path}: recorded guest SPI {placed.guest_spi} is "
                                     f"not host SPI {irq.number}, which Xen requires")

    def _place_regions(self, node: DeviceNode) -> tuple[RegionPlacement, ...]:
        ps = self.record.page_size
        order = sorted(range(len(node.regions)), key=lambda i: node.regions[i].address)
        clusters: list[list[int]] = []
        cluster_end = -1
        for i in order:
            region = node.regions[i]
            if region.size <= 0:
                raise GuestError(f"{node.path}: reg entry {i} has size {region.size}")
            start = region.address - region.address % ps
            if clusters and start < cluster_end:
                clusters[-1].append(i)
            else:
                clusters.append([i])
            cluster_end = max(cluster_end, -(-region.end // ps) * ps)
        guest: dict[int, int] = {}
        for members in clusters:
            host_start = min(node.regions[i].address for i in members)
            host_start -= host_start % ps
            host_end = max(-(-node.regions[i].end // ps) * ps for i in members)
            base = self._find_pages(host_end - host_start, node.path)
            self._taken.append(AddressRange(base, host_end - host_start))
            for i in members:
                guest[i] = base + node.regions[i].address - host_start
        return tuple(RegionPlacement(i, r.address, r.size, guest[i])
                     for i, r in enumerate(node.regions))

    def _find_pages(self, size: int, path: str) -> int:
        window = self.record.window
        busy = sorted(self._taken + self._reserved, key=lambda r: r.base)
        candidate = window.base
        for other in busy:
            if other.end <= candidate:
                continue
            if AddressRange(candidate, size).overlaps(other):
                end = other.end
                candidate = -(-end // self.record.page_size) * self.record.page_size
        if candidate + size > window.end:
            raise GuestError(f"{path}: no free {size:#x} bytes left in the guest MMIO window "
                             f"{window.base:#x}+{window.size:#x}")
        return candidate

    def _place_interrupts(self, node: DeviceNode, identity: bool,
                          hints: Mapping[str, Trigger]) -> tuple[InterruptPlacement, ...]:
        placed = []
        pool = self.record.spi_pool
        for index, irq in enumerate(node.interrupts):
            host_trigger = irq.trigger
            if host_trigger is Trigger.UNKNOWN:
                host_trigger = hints.get(irq.controller, Trigger.UNKNOWN)
            if irq.type is IrqType.PPI:
                raise GuestError(f"{node.path}: interrupt {index} is a per-CPU PPI "
                                 f"({irq.number}); it cannot be given to a guest")
            if identity:
                if irq.type is not IrqType.SPI:
                    raise GuestError(f"{node.path}: interrupt {index} is not a GIC SPI "
                                     f"(controller {irq.controller}); Xen passes only "
                                     "physical SPIs through")
                if irq.number in self._spis:
                    raise GuestError(f"{node.path}: host SPI {irq.number} is already given "
                                     "to another device of this guest")
                spi, trigger = irq.number, host_trigger
                if trigger is Trigger.UNKNOWN:
                    raise GuestError(f"{node.path}: interrupt {index} has an unknown trigger")
            else:
                try:
                    trigger = guest_trigger(host_trigger)
                except GuestError as err:
                    raise GuestError(f"{node.path}: interrupt {index} (controller "
                                     f"{irq.controller}, specifier {list(irq.specifier)}): "
                                     f"{err}") from None
                free = (n for n in range(pool.start, pool.start + pool.count)
                        if n not in self._spis)
                next_free = next(free, None)
                if next_free is None:
                    raise GuestError(f"{node.path}: the guest SPI pool {pool.start}.."
                                     f"{pool.start + pool.count - 1} is exhausted")
                spi = next_free
            self._spis.add(spi)
            placed.append(InterruptPlacement(index, irq.controller, irq.type, irq.number,
                                             host_trigger, spi, trigger))
        return tuple(placed)


def new_record(*, page_size: int = DEFAULT_PAGE_SIZE,
               window: AddressRange | None = None,
               spi_pool: SpiPool | None = None) -> GuestPlacement:
    """An empty record with the given (or default) window and pool."""
    return GuestPlacement(
        page_size,
        window or AddressRange(DEFAULT_WINDOW_BASE, DEFAULT_WINDOW_SIZE),
        spi_pool or SpiPool(DEFAULT_SPI_START, DEFAULT_SPI_COUNT),
    )


def spis_of(devices: Sequence[DevicePlacement]) -> set[int]:
    """Every guest SPI used by ``devices``."""
    return {irq.guest_spi for d in devices for irq in d.interrupts}
