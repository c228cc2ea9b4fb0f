"""From a host device node and its driver to the guest's node (pure logic).

The guest node keeps what describes the IP block (``compatible``, ``reg-names``,
``interrupt-names``, ``clock-names``, binding parameters such as ``reg-shift``) and loses what
ties it to the host board: pin control, power domains, resets, IOMMU and DMA wiring, PHYs,
interconnects, OPP tables, regulators, GPIO lines, and any phandle to a host-only node. What
cannot be dropped is re-created for the guest: ``reg`` in the guest MMIO window,
``interrupts`` as guest GIC SPIs, and each clock as a ``fixed-clock`` node running at the
host's rate (a guest driver computes baud rates and timeouts from it, so a made-up rate would
be a silent bug; with no known rate we refuse).

A device presented to the guest as a PCI function (:class:`PciFunction`: ``platpass serve
--pci`` on the host, QEMU's ``vfio-user-pci`` in the VMM) is found by the guest by PCI
enumeration, with its BARs and INTx: its node is the PCI binding's description of that
function (``reg`` = the function's bus/device/function, ``compatible`` = ``pciVVVV,DDDD``),
with no MMIO ``reg`` or ``interrupts``. It exists for what enumeration cannot say: the
clocks the guest driver asks its firmware node for, and the children on its bus.

A driver has the last word: :attr:`PlatformDriver.guest_drop_properties` drops more, and
:meth:`PlatformDriver.guest_properties` may add, keep or rewrite properties.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from platpass.drivers.common import PlatformDriver
from platpass.errors import GuestError
from platpass.firmware.model import Clock, DeviceNode, Trigger
from platpass.guest.dts import (
    Cells,
    Node,
    PropValue,
    Raw,
    Ref,
    Strings,
    cells_of,
    decode_strings,
    label_for,
    node_name_for,
    u32,
    u64_cells,
)
from platpass.guest.placement import DevicePlacement

#: Properties that describe the host board, never the guest (exact names).
HOST_ONLY_PROPERTIES: frozenset[str] = frozenset({
    "pinctrl-names", "power-domains", "power-domain-names", "resets", "reset-names",
    "iommus", "iommu-map", "iommu-map-mask", "dmas", "dma-names", "#dma-cells",
    "dma-coherent", "dma-noncoherent", "dma-ranges", "dma-channels", "dma-requests",
    "phys", "phy-names", "#phy-cells", "interconnects", "interconnect-names",
    "operating-points-v2", "opp-table", "assigned-clocks", "assigned-clock-rates",
    "assigned-clock-parents", "msi-parent", "msi-map", "msi-map-mask", "msi-controller",
    "memory-region", "memory-region-names", "nvmem-cells", "nvmem-cell-names", "nvmem",
    "gpios", "gpio-ranges", "pwms", "pwm-names", "io-channels", "io-channel-names",
    "mboxes", "mbox-names", "hwlocks", "hwlock-names", "mux-controls", "sound-dai",
    "thermal-sensors", "#thermal-sensor-cells", "cooling-device", "#cooling-cells",
    "dynamic-power-coefficient", "sram", "syscon", "wakeup-parent", "interrupts-extended",
    "linux,phandle", "phandle", "status", "interrupt-parent", "reg", "interrupts",
    "clocks", "clock-names", "power-domains-names", "access-controllers",
    "#access-controller-cells", "qcom,ice",
})
#: Properties the guest node gets its own value of (reported with reason :data:`REWRITTEN`).
REWRITTEN_PROPERTIES: frozenset[str] = frozenset({
    "reg", "interrupts", "interrupts-extended", "interrupt-parent", "status", "phandle",
    "linux,phandle",
})
REWRITTEN = "rewritten for the guest"
#: Host-only property name patterns (regulator supplies, GPIO lines, pin states,
#: boot-phase markers).
HOST_ONLY_PATTERNS: tuple[str, ...] = (
    "*-supply", "*-gpios", "*-gpio", "pinctrl-[0-9]*", "bootph-*", "u-boot,*",
)
#: Words in vendor property names that in practice hold a phandle to a host system
#: controller (``rockchip,grf``, ``samsung,syscon-phandle``...); dropped when the value
#: starts with a phandle of the host tree.
PHANDLE_NAME_HINTS: tuple[str, ...] = (
    "syscon", "grf", "phandle", "sram", "regmap", "pmu", "sysreg", "sys-mgr", "scm", "msi",
    "clkc", "iommu", "mailbox", "power", "reset",
)
#: Rate given to a clock named ``apb_pclk`` when the host's is unknown: it is the APB bus
#: clock, which Linux's amba bus (and DesignWare 8250) only enable, never reading its rate.
APB_PCLK_DEFAULT_RATE = 24_000_000

_GIC_SPI = 0
_GIC_FLAGS: Mapping[Trigger, int] = {
    Trigger.EDGE_RISING: 1, Trigger.EDGE_FALLING: 2, Trigger.EDGE_BOTH: 3,
    Trigger.LEVEL_HIGH: 4, Trigger.LEVEL_LOW: 8,
}


def gic_flags(trigger: Trigger) -> int:
    """The GIC binding's third cell for ``trigger``."""
    try:
        return _GIC_FLAGS[trigger]
    except KeyError:
        raise GuestError(f"trigger type {trigger} has no GIC encoding") from None


@dataclass(frozen=True, slots=True)
class ClockRates:
    """What is known about clock rates beyond the host tree itself.

    ``overrides`` (from the command line) match a clock by its ``clock-names`` entry, by its
    provider's path, or by ``PROVIDER_PATH:INDEX`` of the consumer's clock list; ``"*"`` is a
    last-resort rate for any clock. ``live`` holds Linux clock names to rates read from the
    running host (``/sys/kernel/debug/clk/<name>/clk_rate``); ``provider_names`` maps a
    provider path to its ``clock-output-names`` (or node name) so a consumer's clock can be
    found there.
    """

    overrides: Mapping[str, int] = field(default_factory=dict)
    live: Mapping[str, int] = field(default_factory=dict)
    provider_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GuestClock:
    """One ``fixed-clock`` node the guest gets in place of a host clock."""

    label: str
    name: str
    rate: int
    source: str

    def node(self) -> Node:
        """The ``fixed-clock`` DTS node."""
        return Node(
            name=self.name,
            label=self.label,
            properties={
                "compatible": Strings(("fixed-clock",)),
                "#clock-cells": u32(0),
                "clock-frequency": u32(self.rate),
            },
            comments=(f"rate from {self.source}",),
        )


@dataclass(frozen=True, slots=True)
class PciFunction:
    """Where a device sits as a PCI function in the guest, and the identity it has there."""

    bus: int
    slot: int
    function: int
    vendor: int
    device: int

    def __post_init__(self) -> None:
        if not (0 <= self.bus <= 0xFF and 0 <= self.slot <= 0x1F and 0 <= self.function <= 7):
            raise GuestError(f"PCI address {self.bus:02x}:{self.slot:02x}.{self.function} is "
                             "out of range (bus 0-ff, slot 0-1f, function 0-7)")

    @property
    def phys_hi(self) -> int:
        """The first ``reg`` cell of the PCI binding: bus [23:16], device [15:11],
        function [10:8] (configuration space, register 0)."""
        return self.bus << 16 | self.slot << 11 | self.function << 8

    @property
    def unit_address(self) -> str:
        """``DD`` or ``DD,F`` (hex), the PCI binding's unit address."""
        return f"{self.slot:x}" if not self.function else f"{self.slot:x},{self.function:x}"

    @property
    def qemu_addr(self) -> str:
        """The value of QEMU's ``-device ...,addr=`` that puts the function here."""
        return f"{self.slot:#x}" if not self.function else f"{self.slot:02x}.{self.function:x}"

    @property
    def compatible(self) -> str:
        """``pciVVVV,DDDD`` (hex, no leading zeros), as the PCI binding names a function."""
        return f"pci{self.vendor:x},{self.device:x}"


@dataclass(frozen=True, slots=True)
class GuestDevice:
    """The guest's view of one assigned device: its node, its clocks, what was dropped."""

    host: DeviceNode
    placement: DevicePlacement
    node: Node
    clocks: tuple[GuestClock, ...]
    #: Host property name -> why it is not in the guest node.
    dropped: Mapping[str, str]
    #: Where the guest finds it as a PCI function (None: a platform device at its MMIO
    #: placement).
    pci: PciFunction | None = None

    @property
    def label(self) -> str:
        """The node's DTS label (the crosvm ``dt-symbol``)."""
        return self.placement.label


def _is_host_only(name: str, extra: tuple[str, ...], driver_name: str) -> str | None:
    if name in extra:
        return f"dropped by driver {driver_name}"
    if name in HOST_ONLY_PROPERTIES:
        return "host-only property"
    for pattern in HOST_ONLY_PATTERNS:
        if fnmatch.fnmatchcase(name, pattern):
            return "host-only property"
    return None


def _looks_like_host_phandle(name: str, value: bytes, host_phandles: frozenset[int]) -> bool:
    if "," not in name or not value or len(value) % 4:
        return False
    if not any(hint in name for hint in PHANDLE_NAME_HINTS):
        return False
    return cells_of(value)[0] in host_phandles


def _clock_names(node: DeviceNode) -> list[str | None]:
    names = [c.name for c in node.clocks]
    raw = node.properties.get("clock-names")
    if raw is not None and not any(names):
        decoded = decode_strings(raw) or ()
        names = [decoded[i] if i < len(decoded) else None for i in range(len(node.clocks))]
    return names


def _assigned_rates(node: DeviceNode) -> dict[int, int]:
    """Clock index -> rate from ``assigned-clocks``/``assigned-clock-rates``.

    ``assigned-clocks`` entries are matched cell for cell against the node's own ``clocks``
    entries; parsing stops at a provider whose cell count the node's clocks do not reveal.
    """
    raw_clocks = node.properties.get("clocks")
    raw_assigned = node.properties.get("assigned-clocks")
    raw_rates = node.properties.get("assigned-clock-rates")
    if raw_clocks is None or raw_assigned is None or raw_rates is None:
        return {}
    clock_cells = cells_of(raw_clocks)
    entries: list[tuple[int, ...]] = []
    spec_len: dict[int, int] = {}
    pos = 0
    for clock in node.clocks:
        n = 1 + len(clock.specifier)
        entry = clock_cells[pos:pos + n]
        if len(entry) != n:
            return {}
        entries.append(entry)
        spec_len[entry[0]] = len(clock.specifier)
        pos += n
    assigned = cells_of(raw_assigned)
    rates = cells_of(raw_rates)
    result: dict[int, int] = {}
    pos = ordinal = 0
    while pos < len(assigned):
        phandle = assigned[pos]
        if phandle not in spec_len:
            break
        entry = assigned[pos:pos + 1 + spec_len[phandle]]
        if ordinal < len(rates) and rates[ordinal] and entry in entries:
            result.setdefault(entries.index(entry), rates[ordinal])
        pos += len(entry)
        ordinal += 1
    return result


def _live_rate(clock: Clock, rates: ClockRates) -> tuple[int, str] | None:
    names = rates.provider_names.get(clock.provider, ())
    candidates: list[str] = []
    if clock.specifier and names and clock.specifier[0] < len(names):
        candidates.append(names[clock.specifier[0]])
    elif not clock.specifier and names:
        candidates.append(names[0])
    for name in candidates:
        if name in rates.live:
            return rates.live[name], f"live host clock {name!r}"
    return None


def _clock_node_name(label: str, suffix: str) -> str:
    return node_name_for(f"clock-{label}-{suffix}").lower().replace("_", "-")


def resolve_rate(node: DeviceNode, index: int, name: str | None, rates: ClockRates,
                 assigned: Mapping[int, int], family: str) -> tuple[int, str] | None:
    """The rate of clock ``index`` of ``node`` and where it came from, or None."""
    clock = node.clocks[index]
    for key in (name, f"{clock.provider}:{index}", clock.provider):
        if key is not None and key in rates.overrides:
            return rates.overrides[key], f"command line ({key})"
    if clock.rate:
        return clock.rate, f"fixed-clock {clock.provider}"
    if index in assigned:
        return assigned[index], "assigned-clock-rates"
    raw_freq = node.properties.get("clock-frequency")
    if raw_freq is not None and len(node.clocks) == 1 and family != "i2c" and len(raw_freq) == 4:
        return int.from_bytes(raw_freq, "big"), "clock-frequency"
    live = _live_rate(clock, rates)
    if live is not None:
        return live
    if "*" in rates.overrides:
        return rates.overrides["*"], "command line (*)"
    return None


def _guest_clocks(node: DeviceNode, label: str, rates: ClockRates,
                  family: str) -> tuple[list[GuestClock], list[str | None], list[int]]:
    """Fixed clocks for ``node`` (deduplicated), the guest clock-names, and per-entry refs."""
    names = _clock_names(node)
    assigned = _assigned_rates(node)
    clocks: list[GuestClock] = []
    by_source: dict[tuple[str, tuple[int, ...]], int] = {}
    refs: list[int] = []
    missing: list[str] = []
    for index, clock in enumerate(node.clocks):
        key = (clock.provider, clock.specifier)
        if key in by_source:
            refs.append(by_source[key])
            continue
        name = names[index]
        found = resolve_rate(node, index, name, rates, assigned, family)
        if found is None and name == "apb_pclk":
            found = (APB_PCLK_DEFAULT_RATE, "default (APB bus clock; rate unused)")
        if found is None:
            missing.append(f"clock {index}" + (f" ({name!r})" if name else "")
                           + f" from {clock.provider} {list(clock.specifier)}")
            continue
        rate, source = found
        if not 0 < rate <= 0xFFFFFFFF:
            raise GuestError(f"{node.path}: clock {index} rate {rate} does not fit a "
                             "fixed-clock's 32-bit clock-frequency")
        suffix = name or str(index)
        by_source[key] = len(clocks)
        refs.append(len(clocks))
        clocks.append(GuestClock(label=label_for(f"{label}_clk_{suffix}"),
                                 name=_clock_node_name(label, suffix),
                                 rate=rate, source=source))
    if missing:
        raise GuestError(
            f"{node.path}: no rate is known for " + "; ".join(missing)
            + ". Give one with --clock-rate NAME=HZ (NAME: the clock-names entry, the "
              "provider path, PROVIDER:INDEX, or * for any clock), or use --live on the host")
    return clocks, names, refs


def build_guest_device(
    node: DeviceNode,
    driver: PlatformDriver,
    placement: DevicePlacement,
    *,
    rates: ClockRates | None = None,
    host_phandles: frozenset[int] = frozenset(),
    interrupt_parent: int | None = None,
    host_gic_flags: bool = False,
    address_cells: int = 2,
    size_cells: int = 2,
    children: tuple[list[Node], Mapping[str, str]] = ([], {}),
    pci: PciFunction | None = None,
) -> GuestDevice:
    """The guest node of ``node`` placed at ``placement``.

    ``interrupt_parent`` is the guest GIC's phandle when the output must name it (QEMU,
    Xen); ``None`` leaves the node inheriting the root's. ``host_gic_flags`` keeps the host
    trigger cell exactly (Xen); otherwise the placement's guest trigger is used.
    ``children`` are the guest nodes of the device's subtree and what was dropped from
    them (:func:`platpass.guest.subtree.guest_children`).
    Raises :class:`GuestError` when a clock has no known rate, or the placement does not
    belong to ``node``.
    """
    if pci is not None:
        if placement.host_path != node.path or placement.regions or placement.interrupts:
            raise GuestError(f"{node.path}: a PCI function has no MMIO or SPI placement")
    elif placement.host_path != node.path or len(placement.regions) != len(node.regions) \
            or len(placement.interrupts) != len(node.interrupts):
        raise GuestError(f"{node.path}: placement for {placement.host_path} does not match")
    rates = rates or ClockRates()
    label = placement.label
    dropped: dict[str, str] = {}
    props: dict[str, PropValue] = {}
    extra_drops = tuple(driver.guest_drop_properties)

    compatible = node.properties.get("compatible")
    props["compatible"] = Raw(compatible) if compatible else Strings(node.compatible)
    if pci is not None:
        props["compatible"] = Strings((pci.compatible,))
        props["reg"] = u32(pci.phys_hi, 0, 0, 0, 0)
        # The host's own interrupt wiring means nothing behind a PCI function (INTx).
        dropped.update({name: "a PCI function's interrupt is INTx" for name in
                        ("interrupts", "interrupt-parent", "interrupts-extended",
                         "interrupt-names") if name in node.properties})
    reg: list[int] = []
    for region in placement.regions:
        reg.extend(u64_cells(region.guest_address, address_cells))
        reg.extend(u64_cells(region.size, size_cells))
    if reg:
        props["reg"] = u32(*reg)
    if placement.interrupts:
        if interrupt_parent is not None:
            props["interrupt-parent"] = u32(interrupt_parent)
        cells: list[int] = []
        for irq in placement.interrupts:
            trigger = irq.host_trigger if host_gic_flags else irq.guest_trigger
            cells.extend((_GIC_SPI, irq.guest_spi, gic_flags(trigger)))
        props["interrupts"] = u32(*cells)

    family = getattr(driver, "family", "")
    clocks, names, refs = _guest_clocks(node, label, rates, family)
    if node.is_primecell and "apb_pclk" not in names:
        # Linux's amba bus reads the peripheral ID only after enabling "apb_pclk".
        apb = GuestClock(label=label_for(f"{label}_clk_apb_pclk"),
                         name=_clock_node_name(label, "apb-pclk"),
                         rate=APB_PCLK_DEFAULT_RATE,
                         source="default (APB bus clock; rate unused)")
        clocks.append(apb)
        refs.append(len(clocks) - 1)
        named: list[str | None] = [n or f"clk{i}" for i, n in enumerate(names)]
        names = [*named, "apb_pclk"]
    if refs:
        props["clocks"] = Cells(tuple(Ref(clocks[i].label) for i in refs))
        if any(names):
            props["clock-names"] = Strings(tuple(n or f"clk{i}" for i, n in enumerate(names)))

    for name, value in node.properties.items():
        if name in props or name in dropped or name == "compatible":
            continue
        if name in REWRITTEN_PROPERTIES:
            dropped[name] = REWRITTEN
            continue
        if name in ("clocks", "clock-names"):
            if not node.clocks:
                dropped[name] = "clocks could not be resolved on the host"
            continue
        reason = _is_host_only(name, extra_drops, driver.name)
        if reason is None and _looks_like_host_phandle(name, value, host_phandles):
            reason = "phandle to a host-only node"
        if reason is not None:
            dropped[name] = reason
            continue
        props[name] = Raw(value)

    if "interrupt-controller" in props and "#address-cells" not in props:
        # An interrupt provider states its address width (dtc's interrupt_provider check;
        # an interrupt-map pointing at it needs it). Nothing sits below it in the guest.
        props["#address-cells"] = u32(0)

    plain = {k: v.value for k, v in props.items() if isinstance(v, Raw)}
    rewritten = driver.guest_properties(plain)
    for name in plain:
        if name not in rewritten:
            del props[name]
            dropped[name] = f"dropped by driver {driver.name}"
    for name, value in rewritten.items():
        if name not in plain or plain[name] != value:
            props[name] = Raw(bytes(value))
    props["status"] = Strings(("okay",))

    base = node.name.split("@", 1)[0]
    unit = f"@{placement.guest_address:x}" if placement.regions else ""
    if pci is not None:
        unit = f"@{pci.unit_address}"
    guest_node = Node(
        name=node_name_for(base) + unit,
        label=label,
        properties=props,
        children=list(children[0]),
        comments=(f"host {node.path}",),
    )
    dropped.update(children[1])
    return GuestDevice(node, placement, guest_node, tuple(clocks), dropped, pci)
