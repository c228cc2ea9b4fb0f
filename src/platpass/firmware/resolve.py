"""Resolution of a raw node into what it means: CPU addresses, interrupts, clocks.

Pure logic over a :class:`~platpass.firmware.rawtree.RawTree` (no I/O, no libfdt). The rules
are those of the Devicetree Specification (chapter 2.3 and 2.4) as Linux applies them
(``drivers/of/address.c``, ``drivers/of/irq.c``):

* ``reg`` is read with the parent's ``#address-cells``/``#size-cells`` (defaults 2 and 1)
  and translated through the ``ranges`` of every bus up to the root. An empty ``ranges`` is
  an identity mapping; a bus without ``ranges`` (I2C, SPI, MDIO, SPMI, ``/cpus``...) ends
  the CPU address space: its children are not MMIO.
* The interrupt parent is the node's ``interrupt-parent`` or, failing that, its tree parent,
  repeated until a node with ``#interrupt-cells`` is reached (so ``interrupt-parent`` is in
  effect inherited). ``interrupts-extended`` names the parent per entry. A nexus with
  ``interrupt-map`` translates the (unit address, specifier) pair, masked with
  ``interrupt-map-mask``, to its parent's, as many levels as it takes.
* GIC specifiers are decoded: cell 0 type (0 SPI, 1 PPI; GICv3 2/3 extended ranges), cell 1
  number, cell 2 flags (1 rising, 2 falling, 3 both, 4 high, 8 low; bits 8-15 of a GICv2
  PPI are a CPU mask). A controller with the generic two-cell binding gives its number
  and trigger; others give their first cell.
* ``clocks`` entries are resolved to their provider (``#clock-cells``); the rate is known
  for ``fixed-clock`` and ``fixed-factor-clock`` providers.

Anything that cannot be resolved becomes a problem string for that node only (raised here as
:class:`~platpass.errors.NodeError` and collected by the caller), never an error for the
whole tree.
"""

from __future__ import annotations

import struct

from platpass.errors import NodeError
from platpass.firmware.builders import new_clock, new_interrupt, new_mmio_range
from platpass.firmware.model import Clock, Interrupt, IrqType, MmioRange, Trigger
from platpass.firmware.rawtree import RawNode, RawTree

__all__ = [
    "GIC_COMPATIBLES",
    "AddressMap",
    "cells",
    "decode_specifier",
    "interrupt_parent",
    "resolve_clocks",
    "resolve_interrupts",
    "resolve_regions",
    "string_list",
]

#: Interrupt controllers whose specifiers follow the ARM GIC binding.
GIC_COMPATIBLES = frozenset({
    "arm,arm11mp-gic", "arm,arm1176jzf-devchip-gic", "arm,cortex-a15-gic",
    "arm,cortex-a9-gic", "arm,cortex-a7-gic", "arm,eb11mp-gic", "arm,gic-400",
    "arm,pl390", "arm,tc11mp-gic", "brcm,brahma-b15-gic", "nvidia,tegra210-agic",
    "qcom,msm-8660-qgic", "qcom,msm-qgic2", "arm,gic-v3", "arm,gic-v2",
})

#: Depth limit for interrupt-map chains and fixed-factor clock chains (loops in broken DTs).
MAX_CHAIN = 16

_TRIGGERS = {
    1: Trigger.EDGE_RISING,
    2: Trigger.EDGE_FALLING,
    3: Trigger.EDGE_BOTH,
    4: Trigger.LEVEL_HIGH,
    8: Trigger.LEVEL_LOW,
}

_structs: dict[int, struct.Struct] = {}


def cells(value: bytes, prop: str = "property") -> tuple[int, ...]:
    """A property as big-endian 32-bit cells; raises ValueError if not a multiple of 4."""
    n, rest = divmod(len(value), 4)
    if rest:
        raise ValueError(f"{prop} is {len(value)} bytes, not a whole number of cells")
    unpacker = _structs.get(n)
    if unpacker is None:
        unpacker = _structs[n] = struct.Struct(f">{n}I")
    return unpacker.unpack(value)


#: Decoded string lists by raw value: the same ``compatible`` and ``*-names`` values recur
#: across nodes and boards, so each is decoded once (bounded, values are short).
_string_lists: dict[bytes, tuple[str, ...]] = {}


def string_list(value: bytes | None) -> tuple[str, ...]:
    """A NUL-separated string list property (``compatible``, ``*-names``)."""
    if not value:
        return ()
    known = _string_lists.get(value)
    if known is None:
        known = tuple(value.rstrip(b"\0").decode("utf-8", "replace").split("\0"))
        if len(_string_lists) < 65536 and len(value) <= 256:
            _string_lists[value] = known
    return known


def _join(words: tuple[int, ...] | list[int]) -> int:
    value = 0
    for word in words:
        value = (value << 32) | word
    return value


def _u32(node: RawNode, prop: str) -> int | None:
    value = node.props.get(prop)
    if value is None or len(value) != 4:
        return None
    return (value[0] << 24) | (value[1] << 16) | (value[2] << 8) | value[3]


# --------------------------------------------------------------------------- addresses


class _Bus:
    """How one node's ``reg`` cells are read, and how its children's addresses translate."""

    __slots__ = ("child_ac", "child_sc", "problem", "windows")

    def __init__(self, child_ac: int, child_sc: int,
                 windows: list[tuple[int, int, int]] | None, problem: str | None) -> None:
        self.child_ac = child_ac
        self.child_sc = child_sc
        #: None: identity (root or empty ``ranges``); []: no translation (not MMIO);
        #: else (child base, parent base, size) windows
        self.windows = windows
        self.problem = problem


class AddressMap:
    """Per-tree cache of bus translations, so each bus's ``ranges`` is parsed once."""

    __slots__ = ("_buses", "_mmio", "tree")

    def __init__(self, tree: RawTree) -> None:
        self.tree = tree
        self._buses: dict[str, _Bus] = {}
        # path -> (is the node's address space the CPU's?, problem)
        self._mmio: dict[str, tuple[bool, str | None]] = {}

    def bus(self, node: RawNode) -> _Bus:
        """The translation facts of ``node`` as a parent."""
        bus = self._buses.get(node.path)
        if bus is not None:
            return bus
        ac = _u32(node, "#address-cells")
        sc = _u32(node, "#size-cells")
        child_ac = 2 if ac is None else ac
        child_sc = 1 if sc is None else sc
        problem = None
        if node.parent is None:
            windows: list[tuple[int, int, int]] | None = None
        else:
            ranges = node.props.get("ranges")
            if ranges is None:
                windows = []
            elif not ranges:
                windows = None
            else:
                parent_ac = self.bus(node.parent).child_ac
                windows = []
                entry = child_ac + parent_ac + child_sc
                try:
                    words = cells(ranges, "ranges")
                    if entry == 0 or len(words) % entry:
                        raise ValueError(
                            f"ranges has {len(words)} cells, not a multiple of "
                            f"{child_ac}+{parent_ac}+{child_sc}")
                except ValueError as err:
                    problem = f"{node.path}: {err}"
                else:
                    for i in range(0, len(words), entry):
                        child = _join(words[i:i + child_ac])
                        parent = _join(words[i + child_ac:i + child_ac + parent_ac])
                        size = _join(words[i + child_ac + parent_ac:i + entry])
                        windows.append((child, parent, size))
        bus = _Bus(child_ac, child_sc, windows, problem)
        self._buses[node.path] = bus
        return bus

    def cpu_space(self, node: RawNode) -> tuple[bool, str | None]:
        """Whether addresses of ``node``'s children can reach the CPU's address space.

        True for the root; for any other node, when it has ``ranges`` and its own parent's
        space is the CPU's. The second item says why not, when a broken ``ranges`` is the
        reason.
        """
        known = self._mmio.get(node.path)
        if known is not None:
            return known
        if node.parent is None:
            result: tuple[bool, str | None] = (True, None)
        else:
            bus = self.bus(node)
            if node.props.get("device_type") == b"pci\0":
                # children of a PCI host are PCI functions: their reg is a config-space
                # address, not MMIO
                result = (False, None)
            elif bus.problem is not None:
                result = (False, bus.problem)
            elif bus.windows == []:
                result = (False, None)
            else:
                result = self.cpu_space(node.parent)
        self._mmio[node.path] = result
        return result

    def translate(self, bus_node: RawNode, address: int, size: int) -> int | None:
        """``address`` on ``bus_node``'s child side as a CPU address, or None if unmapped."""
        node = bus_node
        while node.parent is not None:
            windows = self.bus(node).windows
            if windows is not None:
                for child, parent, wsize in windows:
                    # Like Linux (of_bus_default_map), only the start must fall
                    # inside the window.
                    if child <= address < child + wsize:
                        address = address - child + parent
                        break
                else:
                    return None
            node = node.parent
        return address


def resolve_regions(
        amap: AddressMap, node: RawNode,
) -> tuple[bool, tuple[MmioRange, ...], tuple[str, ...]]:
    """``(is_mmio, regions, problems)`` of ``node``; raises NodeError for a malformed ``reg``.

    A node is MMIO when it has a ``reg`` with at least one entry that translates to a CPU
    address; an entry that does not is left out and explained in ``problems``.
    """
    reg = node.props.get("reg")
    parent = node.parent
    if reg is None or parent is None:
        return False, (), ()
    reachable, problem = amap.cpu_space(parent)
    if problem is not None:
        raise NodeError(node.path, problem)
    if not reachable:
        return False, (), ()
    bus = amap.bus(parent)
    ac, sc = bus.child_ac, bus.child_sc
    if sc == 0:
        return False, (), ()
    entry = ac + sc
    try:
        words = cells(reg, "reg")
    except ValueError as err:
        raise NodeError(node.path, str(err)) from None
    if entry == 0 or not words or len(words) % entry:
        raise NodeError(
            node.path,
            f"reg has {len(words)} cells, not a multiple of #address-cells {ac} + "
            f"#size-cells {sc}")
    names = string_list(node.props.get("reg-names"))
    regions = []
    problems = []
    for index, i in enumerate(range(0, len(words), entry)):
        if ac == 2:
            address = (words[i] << 32) | words[i + 1]
        else:
            address = words[i] if ac == 1 else _join(words[i:i + ac])
        if sc == 2:
            size = (words[i + ac] << 32) | words[i + ac + 1]
        else:
            size = words[i + ac] if sc == 1 else _join(words[i + ac:i + entry])
        cpu = amap.translate(parent, address, size)
        if cpu is None:
            problems.append(
                f"reg entry {index} ({address:#x}, size {size:#x}) is outside every "
                f"window of the parent buses' ranges")
            continue
        regions.append(new_mmio_range(cpu, size, names[index] if index < len(names) else None))
    return bool(regions), tuple(regions), tuple(problems)


# -------------------------------------------------------------------------- interrupts


def _interrupt_parent(tree: RawTree, node: RawNode) -> RawNode:
    """The controller or nexus ``node``'s ``interrupts`` refer to (Linux's walk).

    Without its own ``interrupt-parent`` a node's answer depends only on its parent, so it
    is memoised per parent: siblings (most of a SoC) pay for the walk once.
    """
    parent = node.parent
    if "interrupt-parent" in node.props or parent is None:
        return _walk_interrupt_parent(tree, node)
    memo = tree.memo.irq_parent
    hit = memo.get(parent.path)
    if hit is None:
        try:
            hit = _walk_interrupt_parent(tree, node)
        except NodeError as err:
            hit = err.message
        memo[parent.path] = hit
    if isinstance(hit, str):
        raise NodeError(node.path, hit)
    assert isinstance(hit, RawNode)
    return hit


def interrupt_parent(tree: RawTree, node: RawNode) -> RawNode:
    """The controller or nexus ``node``'s ``interrupts`` refer to, ``interrupt-parent``
    inherited as Linux inherits it (``of_irq_find_parent``); raises NodeError."""
    return _interrupt_parent(tree, node)


def _walk_interrupt_parent(tree: RawTree, node: RawNode) -> RawNode:
    current = node
    for _ in range(256):
        phandle = _u32(current, "interrupt-parent")
        if phandle is not None:
            target = tree.by_phandle.get(phandle)
            if target is None:
                raise NodeError(
                    node.path,
                    f"interrupt-parent <{phandle:#x}> of {current.path} names no node")
        else:
            raw = current.props.get("interrupt-parent")
            if raw is not None:
                raise NodeError(node.path, f"interrupt-parent of {current.path} is malformed")
            target = current.parent
            if target is None:
                raise NodeError(node.path, "no interrupt parent up to the root")
        if "#interrupt-cells" in target.props:
            return target
        current = target
    raise NodeError(node.path, "interrupt-parent chain does not end")


def _interrupt_cells(node: RawNode, origin: str) -> int:
    count = _u32(node, "#interrupt-cells")
    if count is None:
        raise NodeError(origin, f"interrupt parent {node.path} has no valid #interrupt-cells")
    return count


def _is_gic(node: RawNode) -> bool:
    compatible = node.props.get("compatible")
    if compatible is None:
        return False
    return any(c in GIC_COMPATIBLES for c in string_list(compatible))


def _gic_encoded(tree: RawTree, node: RawNode) -> bool:
    """A GIC, or a stacked controller (i.MX GPC, wake-up units) forwarding GIC specifiers.

    A controller with three or more specifier cells whose own interrupt parent is a GIC
    is an irq-domain stacked on the GIC and takes the GIC's encoding unchanged.
    """
    memo = tree.memo.gic_encoded
    known = memo.get(node.path)
    if known is not None:
        return known
    result = _is_gic(node)
    count = _u32(node, "#interrupt-cells")
    if not result and count is not None and count >= 3 and (
            "interrupts" in node.props or "interrupt-parent" in node.props):
        try:
            parent = _interrupt_parent(tree, node)
        except NodeError:
            parent = None
        result = parent is not None and parent is not node and _is_gic(parent)
    memo[node.path] = result
    return result


def decode_specifier(gic: bool, specifier: tuple[int, ...]) -> tuple[IrqType, int, Trigger]:
    """``(type, number, trigger)`` of a final (controller-level) specifier."""
    if gic and len(specifier) >= 3:
        kind, number, flags = specifier[0], specifier[1], specifier[2]
        trigger = _TRIGGERS.get(flags & 0xF, Trigger.UNKNOWN)
        if kind == 0:
            return IrqType.SPI, number, trigger
        if kind == 1:
            return IrqType.PPI, number, trigger
        # GICv3 extended SPI (2) / PPI (3) ranges, or something unknown
        return IrqType.OTHER, number, trigger
    if not specifier:
        return IrqType.OTHER, 0, Trigger.UNKNOWN
    if len(specifier) == 2:
        return IrqType.OTHER, specifier[0], _TRIGGERS.get(specifier[1] & 0xF, Trigger.UNKNOWN)
    return IrqType.OTHER, specifier[0], Trigger.UNKNOWN


#: Controllers that carry an ``interrupt-map`` in their own format (parsed by their driver),
#: which Linux therefore does not follow (``of_irq_imap_abusers`` in drivers/of/irq.c).
_IMAP_ABUSERS = frozenset({
    "CBEA,platform-spider-pic", "sti,platform-spider-pic", "realtek,rtl-intc",
    "fsl,ls1021a-extirq", "fsl,ls1043a-extirq", "fsl,ls1088a-extirq", "renesas,rza1-irqc",
})


def _abuses_interrupt_map(node: RawNode) -> bool:
    return any(c in _IMAP_ABUSERS for c in string_list(node.props.get("compatible")))


def _map_address_cells(node: RawNode) -> int:
    """``#address-cells`` for an interrupt-map child unit address (Linux's lookup)."""
    current: RawNode | None = node
    while current is not None:
        value = _u32(current, "#address-cells")
        if value is not None:
            return value
        current = current.parent
    return 2


def _route(tree: RawTree, device: RawNode, controller: RawNode,
           specifier: tuple[int, ...]) -> tuple[RawNode, tuple[int, ...]]:
    """Follow ``interrupt-map`` nexus nodes until an interrupt controller is reached.

    The first map is matched on the device's unit address (its ``reg``), later ones on the
    parent unit address the previous map entry gave.
    """
    origin = device.path
    address: tuple[int, ...] | None = None
    for _ in range(MAX_CHAIN):
        imap = controller.props.get("interrupt-map")
        if "interrupt-controller" in controller.props and (
                imap is None or _abuses_interrupt_map(controller)):
            return controller, specifier
        if imap is None:
            raise NodeError(
                origin,
                f"interrupt parent {controller.path} is neither an interrupt-controller nor "
                f"a nexus with interrupt-map")
        if address is None:
            try:
                reg = device.props.get("reg")
                address = cells(reg, "reg") if reg is not None else ()
            except ValueError:
                address = ()
        ac = _map_address_cells(controller)
        ic = _interrupt_cells(controller, origin)
        key = (tuple(address[:ac]) + (0,) * max(0, ac - len(address)))[:ac] + specifier
        mask_raw = controller.props.get("interrupt-map-mask")
        try:
            words = cells(imap, "interrupt-map")
            mask = cells(mask_raw, "interrupt-map-mask") if mask_raw is not None else None
        except ValueError as err:
            raise NodeError(origin, f"{controller.path}: {err}") from None
        if mask is not None:
            if len(mask) != ac + ic:
                raise NodeError(
                    origin,
                    f"{controller.path}: interrupt-map-mask has {len(mask)} cells, expected "
                    f"{ac}+{ic}")
            key = tuple(k & m for k, m in zip(key, mask, strict=True))
        i, n = 0, len(words)
        found = None
        while i < n:
            if i + ac + ic + 1 > n:
                raise NodeError(origin, f"{controller.path}: interrupt-map entry truncated")
            child = words[i:i + ac + ic]
            phandle = words[i + ac + ic]
            parent = tree.by_phandle.get(phandle)
            if parent is None:
                raise NodeError(
                    origin,
                    f"{controller.path}: interrupt-map names phandle <{phandle:#x}>, no node")
            parent_ac = _u32(parent, "#address-cells") or 0
            parent_ic = _interrupt_cells(parent, origin)
            start = i + ac + ic + 1
            end = start + parent_ac + parent_ic
            if end > n:
                raise NodeError(origin, f"{controller.path}: interrupt-map entry truncated")
            if mask is not None:
                child = tuple(c & m for c, m in zip(child, mask, strict=True))
            if child == key:
                found = (parent, words[start:start + parent_ac], words[start + parent_ac:end])
                break
            i = end
        if found is None:
            raise NodeError(
                origin,
                f"{controller.path}: interrupt-map has no entry for "
                f"<{' '.join(f'{c:#x}' for c in key)}>")
        controller, address, specifier = found
    raise NodeError(origin, "interrupt-map chain does not end")


def resolve_interrupts(tree: RawTree,
                       node: RawNode) -> tuple[tuple[Interrupt, ...], tuple[str, ...]]:
    """Every interrupt of ``node`` resolved to a controller, and the entries that were not.

    Raises NodeError when the property itself cannot be read; an entry that cannot be routed
    is left out and explained in the second item, so the others are still known.
    """
    props = node.props
    extended = props.get("interrupts-extended")
    plain = props.get("interrupts")
    if extended is None and plain is None:
        return (), ()
    entries: list[tuple[RawNode, tuple[int, ...]]] = []
    if extended is not None:
        try:
            words = cells(extended, "interrupts-extended")
        except ValueError as err:
            raise NodeError(node.path, str(err)) from None
        i = 0
        while i < len(words):
            parent = tree.by_phandle.get(words[i])
            if parent is None:
                raise NodeError(
                    node.path, f"interrupts-extended names phandle <{words[i]:#x}>, no node")
            count = _interrupt_cells(parent, node.path)
            if i + 1 + count > len(words):
                raise NodeError(node.path, "interrupts-extended entry truncated")
            entries.append((parent, words[i + 1:i + 1 + count]))
            i += 1 + count
    else:
        assert plain is not None
        parent = _interrupt_parent(tree, node)
        count = _interrupt_cells(parent, node.path)
        try:
            words = cells(plain, "interrupts")
        except ValueError as err:
            raise NodeError(node.path, str(err)) from None
        if count == 0 or len(words) % count:
            raise NodeError(
                node.path,
                f"interrupts has {len(words)} cells, not a multiple of #interrupt-cells "
                f"{count} of {parent.path}")
        kind = _controller_kind(tree, parent)
        if kind is not _NEXUS:
            # the common case: every entry goes straight to one controller
            names = string_list(props.get("interrupt-names"))
            gic = kind is _GIC_CONTROLLER
            path = parent.path
            direct = []
            for index, i in enumerate(range(0, len(words), count)):
                specifier = words[i:i + count]
                irq_type, number, trigger = decode_specifier(gic, specifier)
                direct.append(new_interrupt(path, specifier, irq_type, number, trigger,
                                            names[index] if index < len(names) else None))
            return tuple(direct), ()
        entries = [(parent, words[i:i + count]) for i in range(0, len(words), count)]
    names = string_list(props.get("interrupt-names"))
    out = []
    problems = []
    for index, (parent, specifier) in enumerate(entries):
        kind = _controller_kind(tree, parent)
        if kind is _NEXUS:
            try:
                controller, final = _route(tree, node, parent, specifier)
            except NodeError as err:
                problems.append(f"interrupt {index}: {err.message}")
                continue
            gic = _gic_encoded(tree, controller)
        else:
            controller, final, gic = parent, specifier, kind is _GIC_CONTROLLER
        irq_type, number, trigger = decode_specifier(gic, final)
        out.append(new_interrupt(controller.path, final, irq_type, number, trigger,
                                 names[index] if index < len(names) else None))
    return tuple(out), tuple(problems)


_NEXUS = "nexus"
_CONTROLLER = "controller"
_GIC_CONTROLLER = "gic"


def _controller_kind(tree: RawTree, node: RawNode) -> str:
    """Whether specifiers for ``node`` end there (GIC-encoded or not) or go through a map."""
    memo = tree.memo.controller_kind
    kind = memo.get(node.path)
    if kind is None:
        if "interrupt-controller" in node.props and (
                "interrupt-map" not in node.props or _abuses_interrupt_map(node)):
            kind = _GIC_CONTROLLER if _gic_encoded(tree, node) else _CONTROLLER
        else:
            kind = _NEXUS
        memo[node.path] = kind
    return kind


# ------------------------------------------------------------------------------ clocks


def _clock_rate(tree: RawTree, provider: RawNode, depth: int = 0) -> int | None:
    memo = tree.memo.clock_rate
    if provider.path in memo:
        return memo[provider.path]
    rate = _compute_clock_rate(tree, provider, depth)
    memo[provider.path] = rate
    return rate


def _compute_clock_rate(tree: RawTree, provider: RawNode, depth: int) -> int | None:
    compatible = string_list(provider.props.get("compatible"))
    if "fixed-clock" in compatible:
        value = provider.props.get("clock-frequency")
        if value is None or len(value) not in (4, 8):
            return None
        return int.from_bytes(value, "big")
    if "fixed-factor-clock" in compatible and depth < MAX_CHAIN:
        mult, div = _u32(provider, "clock-mult"), _u32(provider, "clock-div")
        parent_ref = provider.props.get("clocks")
        if not mult or not div or parent_ref is None or len(parent_ref) < 4:
            return None
        parent = tree.by_phandle.get(int.from_bytes(parent_ref[:4], "big"))
        if parent is None:
            return None
        rate = _clock_rate(tree, parent, depth + 1)
        return None if rate is None else rate * mult // div
    return None


def _clock_provider(tree: RawTree, phandle: int) -> tuple[str, int, int | None] | str:
    """``(path, #clock-cells, rate)`` of the provider ``phandle`` names, or why not."""
    memo = tree.memo.clock_provider
    known = memo.get(phandle)
    if known is None:
        provider = tree.by_phandle.get(phandle)
        if provider is None:
            known = f"clocks names phandle <{phandle:#x}>, no node"
        else:
            count = _u32(provider, "#clock-cells")
            if count is None:
                known = f"clock provider {provider.path} has no #clock-cells"
            else:
                known = (provider.path, count, _clock_rate(tree, provider))
        memo[phandle] = known
    return known  # type: ignore[return-value]


def resolve_clocks(tree: RawTree, node: RawNode) -> tuple[tuple[Clock, ...], tuple[str, ...]]:
    """``clocks`` entries of ``node`` resolved to providers, and what stopped the rest.

    An entry that names no provider (or one without ``#clock-cells``) ends the parse: the
    cells after it cannot be split any more, as in Linux. The entries before it are kept.
    """
    raw = node.props.get("clocks")
    if raw is None:
        return (), ()
    try:
        words = cells(raw, "clocks")
    except ValueError as err:
        return (), (str(err),)
    names = string_list(node.props.get("clock-names"))
    out: list[Clock] = []
    i = 0
    index = 0
    while i < len(words):
        if words[i] == 0:
            # an empty entry (phandle 0): "no clock here", keeps later indexes in place
            i += 1
            index += 1
            continue
        provider = _clock_provider(tree, words[i])
        if isinstance(provider, str):
            return tuple(out), (provider,)
        path, count, rate = provider
        if i + 1 + count > len(words):
            return tuple(out), (f"clocks entry {index} truncated",)
        out.append(new_clock(path, words[i + 1:i + 1 + count],
                         names[index] if index < len(names) else None, rate))
        i += 1 + count
        index += 1
    return tuple(out), ()
