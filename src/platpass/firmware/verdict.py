"""The DMA-safety verdict of each device (DESIGN.md section 3), with the evidence for it.

Pure logic: every rule is a function of resolved :class:`DeviceNode` objects, the raw
properties of their ancestors, and the driver registry. The order of the rules is the
safety model itself:

1. **Bus master** (``REFUSED_BUS_MASTER``): ``iommus``/``iommu-map``, ``msi-parent``/
   ``msi-map`` (on the node or on any ancestor: a wrapper such as Qualcomm's GENI QUP
   carries the stream ID its serial engines master with), ``#dma-cells``, ``dma-coherent``,
   ``dma-ranges`` on the device, ``memory-region``, ``device_type`` ``pci``/``network``, a
   compatible of a family known to master the bus, or a driver declaring the IP a master.
   Nothing outranks this rule, not even a driver claiming the device.
2. **Shared** (``REFUSED_SHARED``): another enabled device uses the same interrupt line
   (controller, type, number), or another device's registers overlap this one's (enabled
   or not: a disabled node's registers are still there; a bus is not a peer of the
   devices on it).
3. **Host in use** (``REFUSED_HOST_IN_USE``): the device cannot write memory, but the host
   still depends on it. A device goes to a guest *with its subtree* (itself and its
   children on its bus), or with the union of the subtrees of its co-assignment group.
   It is refused when:

   * ``host-consumer``: an enabled node outside the subtree refers to a node inside it
     through a property fw_devlink follows (:mod:`platpass.firmware.consumers`: clocks,
     ``*-supply``, ``*-gpios``, ``pwms``, ``interrupt-parent``/``interrupts-extended``,
     ``i2c-bus``, ``ddc-i2c-bus``, ``/chosen`` ``stdout-path``..., phandle lists walked
     by their providers' ``#*-cells`` so only real references count): the console, a
     PWM feeding a CPU regulator, the bank that is the PMIC's interrupt parent;
   * ``needs-host-resource``: an enabled node inside the subtree takes an interrupt or a
     GPIO (a property the guest's tree keeps) from a provider outside it; it may go only
     together with that provider (a co-assignment group); supplies and clocks are fine,
     the guest gets fixed ones;
   * ``host-critical-child``: the subtree holds boot or firmware storage (flash with
     ``partitions``), a TPM or secure element, a PMIC or regulator, a board controller;
   * ``system-reset``: the driver can reset the whole system (watchdogs): only on the
     user's explicit opt-in for that device; ``unstoppable-reset``: one that cannot be
     stopped once started, refused always, since its effect outlives the VM;
   * on a live host, the kernel's own view (:data:`LIVE_RULES`: fw_devlink links, drivers
     bound to children, MTD devices, regulators).

   Every rule in :data:`WAIVABLE_RULES` can be waived per device and per rule by the user
   (``--override``, ``override`` in the TOML), logged and kept in the evidence; bus-master
   and shared refusals, and ``unstoppable-reset``, never.
4. **Not a device we can reach** (``REFUSED_UNKNOWN``): not MMIO.
5. **No device-specific driver** (``REFUSED_UNKNOWN``): the absence of DT evidence proves
   nothing; only a driver's declaration does. A claimed device whose firmware could not be
   fully resolved is refused the same way (we cannot prove what we could not read).
6. **Traps** (``ASSIGNABLE_WITH_TRAPS``): slave DMA (``dmas``: the guest's node drops it and
   the driver's ``dma_traps`` apply), a region that is not page-aligned or shares a page with
   another device, enabled or not (trapped, never mapped), registers the driver always
   traps.
7. Otherwise ``ASSIGNABLE``.

Disabled devices are judged too. They never share an interrupt line or consume anything
(they do not use it), but their registers count for pages and overlaps. Every device's
outside consumers are reported (``Assessment.consumers``, ``scan --json``) whatever its
verdict.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from platpass.firmware.consumers import Reference, references
from platpass.firmware.model import DeviceNode, Interrupt, MmioRange

if TYPE_CHECKING:
    from platpass.drivers.common import PlatformDriver
    from platpass.drivers.registry import DriverRegistry
    from platpass.firmware.devicetree import DeviceTree
    from platpass.firmware.rawtree import RawNode, RawTree

__all__ = [
    "BUS_MASTER_FAMILIES",
    "LIVE_RULES",
    "NO_MAP_RULES",
    "PAGE_SIZE",
    "WAIVABLE_RULES",
    "Assessment",
    "Evidence",
    "Verdict",
    "assess_node",
    "assess_tree",
    "bus_master_evidence",
    "guest_drops",
    "host_critical",
    "host_use",
    "host_use_evidence",
    "overlapping_regions",
    "region_trap_evidence",
    "shared_interrupts",
    "shared_pages",
    "system_reset_evidence",
]

#: Granule of the mappings a guest gets; a region smaller or misaligned is trapped.
PAGE_SIZE = 4096

#: Evidence rules after which no page of the device may be mapped
#: (:attr:`Assessment.may_map`): the one list every consumer of a verdict honours.
NO_MAP_RULES = frozenset({"sub-page-region", "shared-page"})


class Verdict(StrEnum):
    """What platpass will do with a device; the values are part of ``scan --json``."""

    ASSIGNABLE = "ASSIGNABLE"
    ASSIGNABLE_WITH_TRAPS = "ASSIGNABLE_WITH_TRAPS"
    REFUSED_BUS_MASTER = "REFUSED_BUS_MASTER"
    REFUSED_UNKNOWN = "REFUSED_UNKNOWN"
    REFUSED_SHARED = "REFUSED_SHARED"
    REFUSED_HOST_IN_USE = "REFUSED_HOST_IN_USE"

    @property
    def assignable(self) -> bool:
        """True for the two verdicts that let a device be assigned."""
        return self in (Verdict.ASSIGNABLE, Verdict.ASSIGNABLE_WITH_TRAPS)


@dataclass(frozen=True, slots=True)
class Evidence:
    """One fact that decided a verdict: which rule, on which property, seeing what value.

    ``property`` is empty when the fact is a link between two nodes: ``value`` then names
    both ends and the property (``/regulator-vddcpu pwms -> /soc/pwm@1b000``).
    """

    rule: str
    property: str
    value: str

    def __str__(self) -> str:
        if not self.property:
            return f"{self.rule}: {self.value}"
        return f"{self.rule}: {self.property} = {self.value}"


@dataclass(frozen=True, slots=True)
class Assessment:
    """A device's verdict, the evidence for it (never empty), and the driver that claims it.

    ``consumers`` are the enabled nodes outside the device's subtree that refer to something
    inside it, whatever the verdict (``scan --json`` lists them).
    """

    node: DeviceNode
    verdict: Verdict
    evidence: tuple[Evidence, ...]
    driver: type[PlatformDriver] | None
    consumers: tuple[Reference, ...] = ()

    def __post_init__(self) -> None:
        if not self.evidence:
            raise ValueError(f"{self.node.path}: a verdict needs evidence")

    @property
    def may_assign(self) -> bool:
        """Whether the device may go to a guest at all. Everyone asks this; nobody looks
        at verdict names or evidence rules to decide it."""
        return self.verdict.assignable

    @property
    def may_map(self) -> bool:
        """Whether any page of the device may be mapped into a guest. False when a rule
        found a region that is sub-page or shares its page with another device: then
        every register is trapped (the guest sees only the device's own bytes)."""
        return self.may_assign and not any(e.rule in NO_MAP_RULES for e in self.evidence)

    @property
    def waived(self) -> tuple[Evidence, ...]:
        """Host-use findings the user waived for this device (each must be logged)."""
        return tuple(e for e in self.evidence if e.rule == "override")

    @property
    def reasons(self) -> tuple[str, ...]:
        """The evidence as readable lines (what ``platpass scan`` prints)."""
        return tuple(str(e) for e in self.evidence)

    @property
    def explanation(self) -> str:
        """The verdict and its evidence on one line, the way every command prints why a
        device was refused: ``REFUSED_BUS_MASTER: rule: property = value; ...``."""
        return f"{self.verdict.value}: " + "; ".join(self.reasons)


# ------------------------------------------------------------------ bus-master evidence

#: Properties that by themselves show a bus master on the node.
_MASTER_PROPERTIES = (
    "iommus", "iommu-map", "msi-parent", "msi-map", "#dma-cells", "dma-coherent",
    "dma-ranges", "memory-region",
)
_MASTER_PROPERTY_SET = frozenset(_MASTER_PROPERTIES)
#: Properties that, on an ancestor, show its children master the bus through it.
_ANCESTOR_MASTER_PROPERTIES = ("iommus", "iommu-map", "msi-parent", "msi-map")
#: ``device_type`` values of bus masters.
_MASTER_DEVICE_TYPES = frozenset({"pci", "network"})

#: Families of IP known to master the bus, matched on each compatible string. Broad on
#: purpose: a false refusal costs a user a line in ``platpass scan``; a false "assignable"
#: hands a guest the machine's memory.
BUS_MASTER_FAMILIES: tuple[tuple[str, str], ...] = (
    ("USB controller", r"usb|[eoux]hci|dwc[23]|musb|\botg\b"),
    ("Ethernet MAC", r"ethernet|ether|gmac|emac|dwmac|stmmac|\bfec\b|macb|\bgem\b|eqos|"
                     r"ethqos|enetc|dpaa|fman|mvneta|\bneta\b|mvpp2|pp2\d|genet|cpsw|ravb|"
                     r"xgmac|\bnic\b|\bmac\b|-mac\b|\bxgbe|switch|qoriq-mc|fsl-mc|dpmac"),
    ("MMC/SD controller", r"mmc|sdhci|sdhc|sdhi|mshc|sdio|sdhost|esdhc|\bsd\b|emmc"),
    ("storage controller", r"sata|ahci|\bufs|ufshc|nvme|nand|\bnfc\b|qspi|fspi|ospi|\bsfc\b|"
                           r"flash-controller"),
    ("PCIe controller", r"pci"),
    ("GPU", r"gpu|mali|adreno|vivante|galcore|panfrost|powervr|\bsgx|\bgc\d{3,4}|v3d|\bvc4|"
            r"etnaviv|host1x|kgsl|\bimg,"),
    ("display/video/camera", r"display|\bvop|\bdpu|mdss|\bmdp|hdmi|\bdsi\b|-dsi|lcdc|lcdif|"
                             r"dcss|\bdrm|\bdss\b|framebuffer|\bedp|\bdp\b|-dp\b|tcon|mixer|"
                             r"\bde2|hdlcd|malidp|mali-dp|komeda|vpu|vdec|venc|video|codec|"
                             r"jpeg|\bisp|camss|camera|\bcsi|-csi|\bcif\b|\biep\b|\brga\b|"
                             r"hantro|\bmfc|\bgsc|scaler|\bipu|\bpxp|ge2d|vdoa|venus|cedrus|"
                             r"\bhvs\b|pixelvalve|\bvec\b|\btxp\b|vchiq|\bfimc|\bmipi|"
                             r"\bvin\b|vin-|\bvsp|\bfcp|\bdu\b|-du\b|\bfdp|\bimr"),
    ("crypto engine", r"crypto|\bcaam|\bsec-v\d|\bqce\b|\bce\d*\b|sahara|\bdcp\b|\bsec\b|"
                      r"\bhash\b|\bsha\d*\b|\baes\b"),
    ("DMA engine", r"dma|pl330|pl08x|\bbam\b|\bgpi\b|\bxor|ringacc|\bpktdma|\bcppi|"
                   r"\bdmac\b|navss"),
    ("Qualcomm GENI serial engine (own DMA)", r"qcom,geni-"),
    ("processor/accelerator", r"remoteproc|rproc|\bdsp\b|-dsp\b|\bscp\b|\bnpu|\bapu\b|"
                              r"\bpru|icss|\brtu\b|\bpas\b|-pas\b|q6v5|wcnss|\bmss\b|\badsp|\bcdsp|"
                              r"\bslpi|\bipa\b|modem|wlan|wifi|bluetooth|\bmhi\b|\bvpe\b|"
                              r"\bdla\b|\bgna\b|accel"),
    ("IOMMU/SMMU (walks page tables)", r"iommu|smmu|\bmmu-\d+|sysmmu|ipmmu|\bdart\b"),
    ("GICv3 redistributor/ITS (reads tables)", r"gic-v[34]|\bits\b"),
    ("trace sink (writes memory)", r"coresight-tmc|\betr\b|coresight-catu"),
    ("audio engine with its own DMA", r"lpass|toddr|frddr|\baiu\b"),
)
_FAMILY_RES = tuple((name, re.compile(pattern)) for name, pattern in BUS_MASTER_FAMILIES)
#: compatible string -> family name or None; compatibles repeat across nodes and boards.
_family_memo: dict[str, str | None] = {}


def _show(value: bytes) -> str:
    """A property value for humans: a string, a boolean, or cells."""
    if not value:
        return "(present)"
    if value.endswith(b"\0") and all(32 <= b < 127 or b == 0 for b in value[:-1]) \
            and not value.startswith(b"\0"):
        return ", ".join(repr(s) for s in value[:-1].decode("ascii").split("\0"))
    if len(value) % 4 == 0:
        words = [int.from_bytes(value[i:i + 4], "big") for i in range(0, len(value), 4)]
        shown = " ".join(f"{w:#x}" for w in words[:8])
        return f"<{shown}{' ...' if len(words) > 8 else ''}>"
    return value.hex()


def family_of(compatible: Iterable[str]) -> tuple[str, str] | None:
    """``(family, compatible)`` of the first compatible naming a bus-master family."""
    for entry in compatible:
        try:
            name = _family_memo[entry]
        except KeyError:
            lowered = entry.lower()
            name = next((family for family, pattern in _FAMILY_RES
                         if pattern.search(lowered)), None)
            if len(_family_memo) < 65536:
                _family_memo[entry] = name
        if name is not None:
            return name, entry
    return None


def bus_master_evidence(
        node: DeviceNode,
        ancestors: Sequence[tuple[str, Mapping[str, bytes]]] = (),
        ancestor_evidence: Sequence[Evidence] = (),
) -> list[Evidence]:
    """Every firmware fact showing ``node`` can master the bus (empty: none found).

    ``ancestors`` are ``(path, raw properties)`` of the node's ancestors, parent first;
    ``ancestor_evidence`` is the same judgement already made (``assess_tree`` memoises it
    per bus, since siblings share their ancestors).
    """
    found = []
    props = node.properties
    if not _MASTER_PROPERTY_SET.isdisjoint(props):
        for prop in _MASTER_PROPERTIES:
            value = props.get(prop)
            if value is not None:
                found.append(Evidence("bus-master-property", prop, _show(value)))
    device_type = props.get("device_type")
    if device_type is not None:
        kind = device_type.rstrip(b"\0").decode("utf-8", "replace")
        if kind in _MASTER_DEVICE_TYPES:
            found.append(Evidence("bus-master-property", "device_type", repr(kind)))
    for path, aprops in ancestors:
        for prop in _ANCESTOR_MASTER_PROPERTIES:
            value = aprops.get(prop)
            if value is not None:
                found.append(Evidence("bus-master-ancestor", f"{path}:{prop}", _show(value)))
    found.extend(ancestor_evidence)
    family = family_of(node.compatible)
    if family is not None:
        found.append(_family_evidence(*family))
    return found


@functools.lru_cache(maxsize=4096)
def _family_evidence(family: str, compatible: str) -> Evidence:
    return Evidence("bus-master-family", "compatible",
                    f"{compatible!r} is in a bus-master family: {family}")


@functools.lru_cache(maxsize=4096)
def _no_driver_evidence(compatible: tuple[str, ...]) -> Evidence:
    shown = ", ".join(repr(c) for c in compatible) or "(none)"
    return Evidence("no-driver", "compatible", f"{shown}: no device-specific driver")


# ---------------------------------------------------------------------- sharing rules


def shared_interrupts(
        users: Iterable[tuple[str, bool, Sequence[Interrupt]]],
) -> dict[str, list[Evidence]]:
    """For each user of a line, the other *enabled* users of the same line.

    ``users`` are ``(path, enabled, interrupts)`` of every node with interrupts; disabled
    ones are judged but never count as users. A line is (controller, type, number).
    """
    users = list(users)
    by_line: dict[tuple[str, str, int], list[str]] = {}
    for path, enabled, irqs in users:
        if not enabled:
            continue
        for irq in irqs:
            paths = by_line.setdefault((irq.controller, irq.type, irq.number), [])
            if not paths or paths[-1] != path:
                paths.append(path)
    out: dict[str, list[Evidence]] = {}
    for path, _enabled, irqs in users:
        for irq in irqs:
            others = [p for p in by_line.get((irq.controller, irq.type, irq.number), ())
                      if p != path]
            if not others:
                continue
            out.setdefault(path, []).append(Evidence(
                "shared-interrupt", "interrupts",
                f"{irq.type} {irq.number} of {irq.controller} also used by "
                f"{', '.join(others)}"))
    return out


def _related(path: str, other: str) -> bool:
    """One node is an ancestor of the other (a bus and a device on it)."""
    return other.startswith(path + "/") or path.startswith(other + "/")


def _overlapping_spans(
        spans: list[tuple[int, int, str, int]],
) -> Iterator[tuple[str, int, str, int]]:
    """Pairs ``(path, index, other, other_index)`` of spans ``[start, end)`` that overlap,
    each pair once, between different nodes that are not ancestor and descendant.

    A sweep over spans sorted by start: O(n log n) however large the spans (a 1 GiB window
    is one span).
    """
    spans.sort()
    # spans still open when the sweep reaches ``start``
    active: list[tuple[int, int, str, int]] = []
    reach = -1  # the furthest end among them
    for span in spans:
        start, end, path, index = span
        if start >= reach:
            # the common case: nothing before this span reaches it
            active = [span]
            reach = end
            continue
        active = [a for a in active if a[1] > start]
        for _ostart, _oend, opath, oindex in active:
            if opath != path and not _related(path, opath):
                yield path, index, opath, oindex
        active.append(span)
        reach = max(reach, end)


def _pairs_evidence(pairs: Iterable[tuple[str, int, str, int]], rule: str,
                    what: Callable[[str], str]) -> dict[str, list[Evidence]]:
    found: dict[str, dict[int, list[str]]] = {}
    for path, index, opath, oindex in pairs:
        found.setdefault(path, {}).setdefault(index, []).append(opath)
        found.setdefault(opath, {}).setdefault(oindex, []).append(path)
    out: dict[str, list[Evidence]] = {}
    for path, by_index in found.items():
        for index, others in sorted(by_index.items()):
            unique = ", ".join(dict.fromkeys(others))
            out.setdefault(path, []).append(Evidence(rule, f"reg[{index}]", what(unique)))
    return out


def shared_pages(
        users: Iterable[tuple[str, Sequence[MmioRange]]],
        page_size: int = PAGE_SIZE,
) -> dict[str, list[Evidence]]:
    """For each node, its regions that share a page with another node's region.

    ``users`` are ``(path, regions)`` of every node with registers, enabled or not: a
    disabled node's registers are still there, and a page it shares is never mapped. A bus
    and the devices on it are not peers: a bus whose ``reg`` spans its children's window
    shares nothing with them.
    """
    mask = page_size - 1
    spans = []
    for path, regions in users:
        for index, region in enumerate(regions):
            start = region.address & ~mask
            end = (region.address + region.size + mask) & ~mask if region.size \
                else start + page_size
            spans.append((start, end, path, index))
    return _pairs_evidence(_overlapping_spans(spans), "shared-page",
                           lambda others: f"shares a {page_size}-byte page with {others}")


def overlapping_regions(
        users: Iterable[tuple[str, Sequence[MmioRange]]],
) -> dict[str, list[Evidence]]:
    """For each node, its regions whose bytes overlap another node's region.

    Two peers claiming the same registers cannot be told apart by trapping: the guest would
    drive registers the other node's driver (or the host) still owns. Enabled or not, as for
    :func:`shared_pages`; a bus and the devices on it are not peers.
    """
    spans = [(region.address, region.end, path, index)
             for path, regions in users
             for index, region in enumerate(regions) if region.size]
    return _pairs_evidence(_overlapping_spans(spans), "overlapping-region",
                           lambda others: f"overlaps the registers of {others}")


def region_trap_evidence(node: DeviceNode, page_size: int = PAGE_SIZE) -> list[Evidence]:
    """Regions that cannot be mapped because they are not page-aligned or page-sized."""
    out = []
    for index, region in enumerate(node.regions):
        if region.address % page_size or region.size % page_size or not region.size:
            out.append(Evidence(
                "sub-page-region", f"reg[{index}]",
                f"{region.address:#x}+{region.size:#x} is not {page_size}-byte aligned: "
                f"trapped, not mapped"))
    return out


# ------------------------------------------------------------------- host-use rules

#: Rules of ``REFUSED_HOST_IN_USE`` a user may waive, per device and per rule, when they
#: know better (``--override PATH=RULE``; each waiver stays in the evidence and is logged).
#: Bus-master and shared refusals are never waivable, nor is a reset that outlives the VM.
#: Host-use findings from the running kernel (:mod:`platpass.host.live_use` reads them and
#: :func:`assess_tree` takes them as data): a fw_devlink consumer outside the subtree, a child
#: bound to a host driver, an MTD device or a regulator inside it.
LIVE_RULES = frozenset({"live-consumer", "live-child-driver", "live-mtd", "live-regulator"})
WAIVABLE_RULES = frozenset({"host-consumer", "needs-host-resource", "host-critical-child",
                            "system-reset"}) | LIVE_RULES

#: What makes a node in a subtree host-critical, matched on each compatible string: the
#: host boots from it, keeps its secrets in it, is powered by it, or is managed through it.
#: Found whatever the node's status: a disabled node is still on the bus, within a guest's
#: reach.
HOST_CRITICAL_FAMILIES: tuple[tuple[str, str], ...] = (
    ("boot or firmware storage", r"spi-nor|spi-nand|\bm25p|\bmx25|\bw25q|\bn25q|\bs25f|"
                                 r"\bgd25|\bis25|\bsst2[56]|\bat45|mt25q|fixed-partitions|"
                                 r"cfi-flash|nor-flash|\bmtd"),
    ("TPM or secure element", r"tpm|\bcr50\b|\bti50\b|slb96|npct|\bst33|se05\d|atecc|"
                              r"atsha|optiga|secure-element"),
    ("PMIC or regulator", r"pmic|\brk8\d\d|pca9450|bd71|bd957|fan53555|syr8\d\d|tcs45\d\d|"
                          r"da9\d\d\d|act88|x-powers,axp|mp886|mp5416|mp8859|\btps6|lp87\d|"
                          r"max77\d|pfuze|pf8x00|sy8106|sy8824|ltc3676|rn5t|stpmic|hi6421|"
                          r"s2mp|s5m87|wm83\d\d|vctrl|regulator"),
    ("board or system controller", r"system-controller|board-controller|cpld|gw,gsc|cros-ec|"
                                   r"embedded-controller|\bmcu\b|\bbmc\b|\bec\b"),
)
_CRITICAL_RES = tuple((name, re.compile(pattern)) for name, pattern in HOST_CRITICAL_FAMILIES)
#: Properties that make a node host-critical whatever its compatible.
_CRITICAL_PROPERTIES = (
    ("regulator-always-on", "PMIC or regulator"),
    ("regulator-boot-on", "PMIC or regulator"),
    ("system-power-controller", "PMIC or regulator"),
    ("gpio-hog", "a line the host configured and holds"),
)
#: Child node names that make their parent host-critical.
_CRITICAL_CHILDREN = (("partitions", "boot or firmware storage"),
                      ("regulators", "PMIC or regulator"))

#: Properties of a node inside the subtree that the guest's tree drops, so the provider they
#: name may stay with the host: the guest gets fixed clocks, and no regulators, pins, power
#: domains, resets, interconnects or DMA engines of the host.
GUEST_DROPPED_REFERENCES = frozenset({
    "clocks", "assigned-clocks", "assigned-clock-parents", "power-domains", "resets",
    "interconnects", "iommus", "dmas", "operating-points-v2", "nvmem-cells", "nvmem",
})


def guest_drops(prop: str) -> bool:
    """Whether the guest's tree drops a reference through ``prop`` (see
    :data:`GUEST_DROPPED_REFERENCES`; also every ``pinctrl-N`` and ``*-supply``)."""
    return prop in GUEST_DROPPED_REFERENCES or prop.endswith("-supply") \
        or prop.startswith("pinctrl-")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/") or root == "/"


def _up(path: str) -> Iterator[str]:
    """``path`` and its ancestors, the root excluded."""
    while path not in ("/", ""):
        yield path
        path = path.rsplit("/", 1)[0]


class _Holders:
    """Which of ``wanted`` hold a path in their subtree (the path itself, or an ancestor),
    innermost first; memoised per path, so a tree costs one walk however many questions.
    ``nodes`` (raw nodes in blob order, parents first: no path splitting) fills the memo
    up front."""

    __slots__ = ("_memo", "_wanted")

    def __init__(self, wanted: Iterable[str], nodes: Iterable[RawNode] = ()) -> None:
        self._wanted = wanted = set(wanted)
        memo: dict[str, tuple[str, ...]] = {"/": (), "": ()}
        self._memo = memo
        for node in nodes:
            parent = node.parent
            if parent is None:
                continue
            path = node.path
            above = memo[parent.path]
            memo[path] = (path, *above) if path in wanted else above

    @property
    def memo(self) -> dict[str, tuple[str, ...]]:
        """The answers known so far, by path (a hot loop reads it before calling)."""
        return self._memo

    def __call__(self, path: str) -> tuple[str, ...]:
        known = self._memo.get(path)
        if known is not None:
            return known
        above = self(path.rsplit("/", 1)[0])
        result = (path, *above) if path in self._wanted else above
        self._memo[path] = result
        return result


#: property name -> whether the guest's tree drops it (names recur on every node).
_drops_memo: dict[str, bool] = {}


def host_use(
        refs: Iterable[Reference],
        enabled: Callable[[str], bool],
        devices: Iterable[str],
        groups: Iterable[Iterable[str]] = (),
        paths: Iterable[str] = (),
        *,
        holders: _Holders | None = None,
) -> tuple[dict[str, list[Reference]], dict[str, list[Reference]]]:
    """For each device of ``devices`` (paths), who still needs what it takes to a guest.

    A device travels with its subtree (itself and its descendants), or with the union of
    the subtrees of its co-assignment group (``groups``). Returns two maps:

    * *outside consumers*: references from an enabled node outside the subtree to a node
      inside it (the host would lose a supplier it uses);
    * *needed providers*: references from an enabled node strictly inside the subtree to a
      node outside it, through a property the guest's tree keeps (interrupts, GPIOs,
      PWMs...): the child would need a host resource that cannot follow it.

    ``paths`` (every node path, parents first) only makes it faster.
    """
    if holders is None:
        holders = _Holders(devices)
        for path in paths:  # parents first: each answer reuses its parent's
            holders(path)
    known_enabled: dict[str, bool] = {}
    roots: dict[str, tuple[str, ...]] = {}
    for group in groups:
        members = tuple(dict.fromkeys(group))
        for member in members:
            roots[member] = members
    outside: dict[str, list[Reference]] = {}
    needs: dict[str, list[Reference]] = {}
    # A holder (a device) contains a node exactly when it is among the node's holders, so
    # "is the consumer inside this supplier's device" is a membership test in two memoised
    # chains, not a path comparison; most references stay within one device, or name a
    # supplier no device holds.
    memo = holders.memo
    drops = _drops_memo
    for ref in refs:
        consumer, prop, supplier = ref
        ok = known_enabled.get(consumer)
        if ok is None:
            ok = known_enabled[consumer] = enabled(consumer)
        if not ok:
            continue
        held_supplier = memo.get(supplier)
        if held_supplier is None:
            held_supplier = holders(supplier)
        held_consumer = memo.get(consumer)
        if held_consumer is None:
            held_consumer = holders(consumer)
        if held_supplier is held_consumer:
            continue  # both in exactly the same devices (or none): nothing crosses
        for holder in held_supplier:
            if holder in held_consumer:
                break
            outside.setdefault(holder, []).append(ref)
        inner = held_consumer[1:] if held_consumer and held_consumer[0] == consumer \
            else held_consumer
        if not inner:
            continue
        dropped = drops.get(prop)
        if dropped is None:
            dropped = guest_drops(prop)
            if len(drops) < 65536:
                drops[prop] = dropped
        if dropped:
            continue
        for holder in inner:
            if holder in held_supplier:
                break
            needs.setdefault(holder, []).append(ref)
    for device, members in roots.items():
        if device in outside:
            outside[device] = [r for r in outside[device]
                               if not any(_inside(r.consumer, m) for m in members)]
        if device in needs:
            needs[device] = [r for r in needs[device]
                             if not any(_inside(r.supplier, m) for m in members)]
    return outside, needs


#: compatible value -> what makes it host-critical ("" for nothing); values recur everywhere.
_critical_memo: dict[bytes, str] = {}


def _critical_compatible(compatible: bytes) -> str:
    known = _critical_memo.get(compatible)
    if known is None:
        known = ""
        lowered = compatible.decode("utf-8", "replace").lower()
        for name, pattern in _CRITICAL_RES:
            if pattern.search(lowered):
                known = f"{name} ({lowered.rstrip(chr(0)).replace(chr(0), ', ')})"
                break
        if len(_critical_memo) < 65536:
            _critical_memo[compatible] = known
    return known


_CRITICAL_PROPERTY_SET = frozenset(prop for prop, _name in _CRITICAL_PROPERTIES)


def _critical(node: RawNode, critical_child: Mapping[str, str]) -> str | None:
    """What makes ``node`` host-critical, or None; ``critical_child`` maps a node path to the
    name of its child that makes it critical."""
    props = node.props
    compatible = props.get("compatible")
    if compatible:
        found = _critical_compatible(compatible)
        if found:
            return found
    if not _CRITICAL_PROPERTY_SET.isdisjoint(props):
        for prop, name in _CRITICAL_PROPERTIES:
            if prop in props:
                return f"{name} ({prop})"
    child = critical_child.get(node.path)
    if child is not None:
        return f"{dict(_CRITICAL_CHILDREN)[child]} (a {child!r} node)"
    return None


def host_critical(tree: RawTree, devices: Iterable[str], *,
                  holders: _Holders | None = None) -> dict[str, list[Evidence]]:
    """For each device of ``devices`` (paths), the host-critical nodes in its subtree
    (itself included), enabled or not (see :data:`HOST_CRITICAL_FAMILIES`)."""
    if holders is None:
        holders = _Holders(devices, nodes=tree.nodes)
    suffixes = tuple(f"/{child}" for child, _name in _CRITICAL_CHILDREN)
    critical_child = {node.parent.path: node.path.rsplit("/", 1)[1]
                      for node in tree.nodes
                      if node.parent is not None and node.path.endswith(suffixes)}
    out: dict[str, list[Evidence]] = {}
    memo = holders.memo
    for node in tree.nodes:
        if node.parent is None:
            continue
        held = memo.get(node.path)
        if held is None:
            held = holders(node.path)
        if not held:
            continue
        what = _critical(node, critical_child)
        if what is None:
            continue
        evidence = Evidence("host-critical-child", "", f"{node.path}: {what}")
        for holder in held:
            out.setdefault(holder, []).append(evidence)
    return out


def system_reset_evidence(node: DeviceNode,
                          driver: type[PlatformDriver] | None) -> list[Evidence]:
    """A device that can reset the whole system: opt-in (``system-reset``), or never when it
    cannot be stopped once started (``unstoppable-reset``, not waivable)."""
    if driver is None or not (driver.resets_system or driver.family == "watchdog"):
        return []
    if _UNCONNECTED_RESET in node.properties:
        return []
    why = driver.unstoppable_on(node)
    if why:
        return [Evidence("unstoppable-reset", "compatible",
                         f"{driver.name}: {why}; a guest that starts it leaves it running "
                         f"after the VM exits, and it resets the host")]
    return [Evidence("system-reset", "compatible",
                     f"{driver.name} ({driver.family}) can reset the whole system: "
                     f"assigned only when the user opts in for this device "
                     f"(--override {node.path}=system-reset)")]


#: On a watchdog node: its reset output is wired to nothing (the simulated board's SP805,
#: whose WDOGRES only the host-side model observes). A description of the hardware, not a
#: waiver: a board that says it is believed, as everything else firmware says is.
_UNCONNECTED_RESET = "platpass,reset-output-unconnected"


def host_use_evidence(outside: Sequence[Reference], needs: Sequence[Reference],
                      device_of: Callable[[str], str | None] = str) -> list[Evidence]:
    """The evidence lines of :func:`host_use`'s findings for one device; ``device_of``
    names the device a supplier node belongs to (an endpoint's or a pin group's device),
    or None when that supplier can never go to a guest (the host's root interrupt
    controller): then the advice to co-assign it would be advice nobody can follow."""
    if not outside and not needs:
        return []
    found = [Evidence("host-consumer", "", str(ref)) for ref in dict.fromkeys(outside)]
    for ref in dict.fromkeys(needs):
        provider = device_of(ref.supplier)
        found.append(Evidence("needs-host-resource", "", (
            f"{ref}: outside the subtree; assign it together with {provider}, or not at all"
            if provider is not None else
            f"{ref}: a line of the host's root interrupt controller, which no guest can "
            f"take; platpass forwards only the device's own interrupts, not a child's")))
    return found


# ------------------------------------------------------------------------ the verdict


def _driver_claim(node: DeviceNode, driver: type[PlatformDriver]) -> Evidence:
    matched = next((c for c in node.compatible if c in driver.compatibles), "?")
    return Evidence("driver", "compatible",
                    f"{matched!r} claimed by {driver.name} ({driver.family}): "
                    f"{driver.evidence}")


def assess_node(
        node: DeviceNode,
        driver: type[PlatformDriver] | None,
        *,
        ancestors: Sequence[tuple[str, Mapping[str, bytes]]] = (),
        ancestor_evidence: Sequence[Evidence] = (),
        shared_irq: Sequence[Evidence] = (),
        shared_page: Sequence[Evidence] = (),
        overlaps: Sequence[Evidence] = (),
        host_in_use: Sequence[Evidence] | Callable[[], Sequence[Evidence]] = (),
        consumers: Sequence[Reference] = (),
        waived: Iterable[str] = (),
) -> Assessment:
    """The verdict of one node given its driver, the sharing facts and the host-use
    findings about it; ``waived`` are the host-use rules the user waived for this node
    (only :data:`WAIVABLE_RULES` can be)."""
    consumers = tuple(consumers)
    waivers = WAIVABLE_RULES.intersection(waived)
    master = bus_master_evidence(node, ancestors, ancestor_evidence)
    if driver is not None and not driver.cannot_master_bus:
        master.append(Evidence("bus-master-driver", "compatible",
                               f"driver {driver.name} declares the IP masters the bus: "
                               f"{driver.evidence}"))
    if master:
        return Assessment(node, Verdict.REFUSED_BUS_MASTER, tuple(master), driver, consumers)
    if shared_irq or overlaps:
        return Assessment(node, Verdict.REFUSED_SHARED, (*shared_irq, *overlaps), driver,
                          consumers)
    if callable(host_in_use):  # built only for a device that gets this far
        host_in_use = host_in_use()
    host_in_use = [*host_in_use, *system_reset_evidence(node, driver)]
    kept = [e for e in host_in_use if e.rule not in waivers]
    overridden = tuple(Evidence("override", e.rule, f"waived by the user: {e}")
                       for e in host_in_use if e.rule in waivers)
    if kept:
        return Assessment(node, Verdict.REFUSED_HOST_IN_USE, (*kept, *overridden), driver,
                          consumers)
    found = _unknown_or_assignable(node, driver, shared_page)
    if not overridden and not consumers:
        return found
    return Assessment(node, found.verdict, found.evidence + overridden, found.driver,
                      consumers)


def _unknown_or_assignable(node: DeviceNode, driver: type[PlatformDriver] | None,
                           shared_page: Sequence[Evidence] = ()) -> Assessment:
    if not node.is_mmio or not node.regions:
        reg = node.properties.get("reg")
        why = "no reg" if reg is None else "reg does not reach the CPU's address space"
        return Assessment(node, Verdict.REFUSED_UNKNOWN,
                          (Evidence("not-mmio", "reg", why),), driver)
    if driver is None:
        return Assessment(node, Verdict.REFUSED_UNKNOWN,
                          (_no_driver_evidence(node.compatible),), None)
    if node.problems:
        return Assessment(node, Verdict.REFUSED_UNKNOWN,
                          tuple(Evidence("firmware-problem", "node", p)
                                for p in node.problems), driver)
    traps: list[Evidence] = []
    dmas = node.properties.get("dmas")
    if dmas is not None:
        names = [t.name for t in driver.dma_traps]
        traps.append(Evidence(
            "slave-dma", "dmas",
            f"{_show(dmas)}: dropped from the guest node"
            + (f"; trapped: {', '.join(names)}" if names else "")))
    traps.extend(region_trap_evidence(node))
    traps.extend(shared_page)
    for trap in driver.traps:
        traps.append(Evidence("driver-trap", f"reg[{trap.region}]+{trap.offset:#x}",
                              f"{trap.name}: {trap.why}"))
    claim = _driver_claim(node, driver)
    if traps:
        return Assessment(node, Verdict.ASSIGNABLE_WITH_TRAPS, (claim, *traps), driver)
    return Assessment(node, Verdict.ASSIGNABLE, (claim,), driver)


def _host_in_use(consumers: Sequence[Reference], needs: Sequence[Reference],
                 device_of: Callable[[str], str | None], critical: Sequence[Evidence],
                 live: Sequence[Evidence]) -> list[Evidence]:
    return [*host_use_evidence(consumers, needs, device_of), *critical, *live]


def _ancestor_evidence(raw: RawNode | None,
                       memo: dict[str, tuple[Evidence, ...]]) -> tuple[Evidence, ...]:
    """Bus-master evidence on ``raw`` and its ancestors, memoised per node path."""
    if raw is None:
        return ()
    known = memo.get(raw.path)
    if known is not None:
        return known
    own = tuple(
        Evidence("bus-master-ancestor", f"{raw.path}:{prop}", _show(raw.props[prop]))
        for prop in _ANCESTOR_MASTER_PROPERTIES if prop in raw.props)
    result = own + _ancestor_evidence(raw.parent, memo)
    memo[raw.path] = result
    return result


def assess_tree(tree: DeviceTree, registry: DriverRegistry, *,
                all: bool = False,
                groups: Iterable[Iterable[str]] = (),
                overrides: Mapping[str, Iterable[str]] | None = None,
                live: Mapping[str, Iterable[tuple[str, str]]] | None = None,
                ) -> list[Assessment]:
    """A verdict for every device of ``tree`` (every node but the root with ``all``).

    ``groups`` are co-assignment groups (node paths that go to one guest together: their
    subtrees count as one); ``overrides`` maps a node path to the host-use rules the user
    waives for it; ``live`` maps a node path to the running kernel's ``(rule, what)``
    findings about it (:data:`LIVE_RULES`, from :func:`platpass.host.live_use.live_host_use`).
    Raises ValueError for an override of a rule that cannot be waived, or an unknown live
    rule.
    """
    live_evidence = {path: [Evidence(rule, "", what) for rule, what in facts]
                     for path, facts in (live or {}).items()}
    for facts in live_evidence.values():
        for fact in facts:
            if fact.rule not in LIVE_RULES:
                raise ValueError(f"{fact.rule}: not a live host-use rule")
    overrides = dict(overrides or {})
    for path, rules in overrides.items():
        bad = sorted(set(rules) - WAIVABLE_RULES)
        if bad:
            raise ValueError(
                f"{path}: {', '.join(bad)} cannot be waived (only "
                f"{', '.join(sorted(WAIVABLE_RULES))})")
    nodes = tree.devices(all=all)
    by_path = tree.raw.by_path
    irq_shares = shared_interrupts(tree.interrupt_users())
    mmio = [(n.path, n.regions) for n in nodes if n.is_mmio]
    page_shares = shared_pages(mmio)
    overlaps = overlapping_regions(mmio)
    holders = _Holders((n.path for n in nodes), nodes=tree.raw.nodes)
    outside, needs = host_use(references(tree.raw, tree.effectively_enabled),
                              tree.effectively_enabled,
                              (n.path for n in nodes), groups, holders=holders)
    critical = host_critical(tree.raw, (n.path for n in nodes), holders=holders)
    memo: dict[str, tuple[Evidence, ...]] = {}
    match = registry.match

    def device_of(path: str) -> str | None:
        raw: RawNode | None = by_path.get(path)
        if raw is not None and "interrupt-controller" in raw.props and not (
                "interrupts" in raw.props or "interrupts-extended" in raw.props):
            return None  # the root controller (a GIC): it has no line of its own
        while raw is not None and "compatible" not in raw.props:
            raw = raw.parent
        return raw.path if raw is not None and raw.parent is not None else path

    out = []
    for node in nodes:
        raw = by_path[node.path]
        path = node.path
        consumers = outside.get(path, ())
        out.append(assess_node(
            node, match(node.compatible),
            ancestor_evidence=_ancestor_evidence(raw.parent, memo),
            shared_irq=irq_shares.get(path, ()),
            shared_page=page_shares.get(path, ()),
            overlaps=overlaps.get(path, ()),
            host_in_use=functools.partial(
                _host_in_use, consumers, needs.get(path, ()), device_of,
                critical.get(path, ()), live_evidence.get(path, ())),
            consumers=tuple(dict.fromkeys(consumers)),
            waived=overrides.get(path, ()),
        ))
    return out
