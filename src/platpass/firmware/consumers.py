"""Who refers to whom: the supplier links Linux's fw_devlink follows, read from a raw tree.

Pure logic over a :class:`~platpass.firmware.rawtree.RawTree`. A :class:`Reference` says
that a node (the consumer) names another (the supplier) in one of the properties Linux's
``drivers/of/property.c`` follows to order probing (``of_supplier_bindings``), plus a few
that name a bus or a device to use (``i2c-bus``, ``ddc-i2c-bus``, ``i2c-parent``,
``sound-dai``, ``mux-controls``, ``cooling-device``) and ``/chosen``'s ``stdout-path`` (the
host's console). Phandle lists are walked with each provider's ``#*-cells``, as
``of_parse_phandle_with_args`` walks them, so that an argument cell is never taken for a
phandle; a list that stops making sense (a phandle naming no node, a provider without its
``#*-cells``) is read up to there, as Linux reads it.

* ``interrupts`` refers to the interrupt parent (``interrupt-parent`` inherited up the
  tree, as ``of_irq_find_parent`` inherits it; ``interrupt-parent`` alone consumes
  nothing); a nexus's ``interrupt-map`` refers to every parent it lists.
* ``pinctrl-N`` refers to pin configuration nodes, which live inside their pin controller.
* A ``gpio-hog`` node's ``gpios`` has no phandle (it is its parent's): not a reference.

The verdict (:mod:`platpass.firmware.verdict`) decides what the references mean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

from platpass.errors import NodeError
from platpass.firmware.rawtree import NATIVE, RawNode, RawTree
from platpass.firmware.resolve import cells, interrupt_parent

__all__ = ["CELLS_PROPERTIES", "PHANDLE_PROPERTIES", "Reference", "phandle_entries", "references"]


class Reference(NamedTuple):
    """``consumer``'s property ``property`` names ``supplier`` (node paths).

    A named tuple rather than a dataclass: a tree has thousands, built on every scan.
    """

    consumer: str
    property: str
    supplier: str

    def __str__(self) -> str:
        return f"{self.consumer} {self.property} -> {self.supplier}"


#: Phandle-with-arguments lists and the provider property giving each entry's argument count.
CELLS_PROPERTIES: dict[str, str] = {
    "clocks": "#clock-cells",
    "assigned-clocks": "#clock-cells",
    "assigned-clock-parents": "#clock-cells",
    "interconnects": "#interconnect-cells",
    "iommus": "#iommu-cells",
    "mboxes": "#mbox-cells",
    "io-channels": "#io-channel-cells",
    "io-backends": "#io-backend-cells",
    "dmas": "#dma-cells",
    "power-domains": "#power-domain-cells",
    "hwlocks": "#hwlock-cells",
    "phys": "#phy-cells",
    "pwms": "#pwm-cells",
    "resets": "#reset-cells",
    "msi-parent": "#msi-cells",
    "interrupts-extended": "#interrupt-cells",
    "thermal-sensors": "#thermal-sensor-cells",
    "sound-dai": "#sound-dai-cells",
    "mux-controls": "#mux-control-cells",
    "mux-states": "#mux-state-cells",
    "access-controllers": "#access-controller-cells",
    "pses": "#pse-cells",
    "cooling-device": "#cooling-cells",
    "gpio": "#gpio-cells",
    "gpios": "#gpio-cells",
}
#: Providers that may leave their ``#*-cells`` out (Linux then takes 0).
_OPTIONAL_CELLS = frozenset({"#msi-cells", "#io-backend-cells", "#access-controller-cells",
                             "#pse-cells", "#mux-state-cells"})

#: Lists of bare phandles (or one phandle).
PHANDLE_PROPERTIES = frozenset({
    "wakeup-parent", "extcon", "nvmem-cells", "nvmem", "leds",
    "backlight", "panel", "remote-endpoint", "post-init-providers", "power-supplies",
    "memory-region", "i2c-bus", "ddc-i2c-bus", "i2c-parent", "mmc-pwrseq", "phy-handle",
    "pcs-handle", "sfp", "sram", "regulator-coupled-with", "operating-points-v2",
})

_PINCTRL = re.compile(r"pinctrl-\d+")
#: Properties that end like a GPIO list but hold a count.
_NOT_GPIO_LISTS = re.compile(r"(^|[-,])n(r-)?gpios$")

#: Nodes whose properties are paths or bookkeeping, not references.
_SKIPPED_NODES = frozenset({"/aliases", "/__symbols__", "/__fixups__", "/__local_fixups__"})

_KIND_NONE = 0
_KIND_CELLS = 1
_KIND_PHANDLES = 2
_KIND_SUPPLY = 3

_kinds: dict[str, tuple[int, str]] = {}
#: Property names known to refer to nothing (grows as trees are read; bounded).
_BORING: set[str] = set()


def _kind(name: str) -> tuple[int, str]:
    """How property ``name`` refers to other nodes (memoised: names recur everywhere)."""
    known = _kinds.get(name)
    if known is not None:
        return known
    if name.startswith("#"):
        kind = (_KIND_NONE, "")
    elif name in CELLS_PROPERTIES:
        kind = (_KIND_CELLS, CELLS_PROPERTIES[name])
    elif name in PHANDLE_PROPERTIES or _PINCTRL.fullmatch(name):
        kind = (_KIND_PHANDLES, "")
    elif name.endswith("-supply"):
        kind = (_KIND_SUPPLY, "")
    elif (name.endswith(("-gpios", "-gpio")) and not _NOT_GPIO_LISTS.search(name)):
        kind = (_KIND_CELLS, "#gpio-cells")
    else:
        kind = (_KIND_NONE, "")
    if len(_kinds) < 65536:
        _kinds[name] = kind
    return kind


def _words(value: bytes) -> tuple[int, ...]:
    return cells(value[:len(value) & ~3])


def _u32(node: RawNode, prop: str) -> int | None:
    value = node.props.get(prop)
    if value is None or len(value) != 4:
        return None
    return int.from_bytes(value, "big")


def _provider(target: RawNode | None, cells_name: str) -> tuple[RawNode | None, int]:
    """A list entry's provider and its argument count; ``(None, 0)`` where the walk of a
    list stops (no such phandle, or a provider without the cell count that is not
    optional). The one reading of a phandle list's entries, for :func:`references` and
    :func:`phandle_entries` alike."""
    if target is None:
        return None, 0
    count = _u32(target, cells_name)
    if count is None:
        if cells_name not in _OPTIONAL_CELLS:
            return None, 0
        count = 0
    return target, count


def phandle_entries(tree: RawTree, node: RawNode,
                    name: str) -> list[tuple[RawNode | None, tuple[int, ...]]] | None:
    """Property ``name`` of ``node`` as ``(supplier, argument cells)`` entries, walked as
    :func:`references` walks it (an empty entry, phandle 0, is ``(None, ())``); None when
    the property is not a reference list, or when it stops making sense before its end
    (the caller cannot rewrite what it cannot read)."""
    value = node.props.get(name)
    kind, cells_name = _kind(name)
    if value is None or kind == _KIND_NONE or len(value) % 4:
        return None
    if kind == _KIND_CELLS and cells_name == "#gpio-cells" and "gpio-hog" in node.props:
        return None
    words = _words(value)
    out: list[tuple[RawNode | None, tuple[int, ...]]] = []
    if kind == _KIND_SUPPLY:
        target = tree.by_phandle.get(words[0]) if len(words) == 1 else None
        return [(target, ())] if target is not None else None
    if kind == _KIND_PHANDLES:
        for phandle in words:
            target = tree.by_phandle.get(phandle)
            if target is None:
                return None
            out.append((target, ()))
        return out
    i, n = 0, len(words)
    while i < n:
        if words[i] == 0:
            out.append((None, ()))
            i += 1
            continue
        target, count = _provider(tree.by_phandle.get(words[i]), cells_name)
        if target is None or i + 1 + count > n:
            return None
        out.append((target, tuple(words[i + 1:i + 1 + count])))
        i += 1 + count
    return out


def _interrupt_map(tree: RawTree, nexus: RawNode) -> Iterator[RawNode]:
    """Every parent an ``interrupt-map`` lists, read entry by entry until it stops making
    sense."""
    words = _words(nexus.props["interrupt-map"])
    child_ac = _u32(nexus, "#address-cells") or 0
    child_ic = _u32(nexus, "#interrupt-cells")
    if child_ic is None:
        return
    i, n = 0, len(words)
    while i + child_ac + child_ic < n:
        parent = tree.by_phandle.get(words[i + child_ac + child_ic])
        if parent is None:
            return
        parent_ic = _u32(parent, "#interrupt-cells")
        if parent_ic is None:
            return
        yield parent
        i += child_ac + child_ic + 1 + (_u32(parent, "#address-cells") or 0) + parent_ic


def _console(tree: RawTree) -> Iterator[Reference]:
    chosen = tree.by_path.get("/chosen")
    if chosen is None:
        return
    for prop in ("stdout-path", "linux,stdout-path"):
        value = chosen.props.get(prop)
        if not value:
            continue
        target = value.split(b"\0", 1)[0].decode("utf-8", "replace").split(":", 1)[0]
        if not target.startswith("/"):
            aliases = tree.by_path.get("/aliases")
            alias = aliases.props.get(target) if aliases is not None else None
            if alias is None:
                continue
            target = alias.split(b"\0", 1)[0].decode("utf-8", "replace")
        if target in tree.by_path:
            yield Reference("/chosen", prop, target)


def references(tree: RawTree, enabled: Callable[[str], bool] | None = None
               ) -> list[Reference]:
    """Every reference of every node of ``tree``, in blob order; with ``enabled``, only
    those of nodes it says are enabled (only an enabled consumer uses what it refers to,
    and the disabled ones hold a third of a typical tree's references).

    The walk runs in C (``platpass.firmware._native``, :mod:`platpass.accel`) when it is
    built: a fifth of a scan was this loop. Both walks give the same list; the rules
    (which property refers how, the providers' cells, the interrupt parent) stay here."""
    if NATIVE is not None:
        def parent_of(node: RawNode) -> RawNode | None:
            try:
                return interrupt_parent(tree, node)
            except NodeError:
                return None

        found: list[Reference] = NATIVE.references(
            tree.nodes, tree.by_phandle, enabled, _kinds, _kind, _SKIPPED_NODES, _provider,
            parent_of, lambda nexus: _interrupt_map(tree, nexus), Reference)
        found.extend(_console(tree))
        return found
    return _references(tree, enabled)


def _references(tree: RawTree, enabled: Callable[[str], bool] | None = None
                ) -> list[Reference]:
    """:func:`references` in Python (without the C module, and the tests' reference)."""
    out: list[Reference] = []
    add = out.append
    by_phandle = tree.by_phandle
    boring = _BORING
    providers: dict[tuple[int, str], tuple[RawNode | None, int]] = {}
    for node in tree.nodes:
        if node.path in _SKIPPED_NODES:
            continue
        path = node.path
        props = node.props
        # the set difference runs in C: most properties (reg, compatible, status...) never
        # refer to anything, and most nodes are left with nothing to look at
        candidates = props.keys() - boring
        if enabled is not None and (candidates or "interrupts" in props
                                    or "interrupt-map" in props) and not enabled(path):
            continue
        for name in ([n for n in props if n in candidates] if candidates else ()):
            value = props[name]
            kind, cells_name = _kind(name)
            if kind == _KIND_NONE:
                if len(boring) < 65536:
                    boring.add(name)
                continue
            if len(value) < 4:
                continue
            if kind == _KIND_CELLS:
                if cells_name == "#gpio-cells" and "gpio-hog" in props:
                    continue
                # each provider's cell count is looked up once per tree
                words = cells(value[:len(value) & ~3])
                i, n = 0, len(words)
                while i < n:
                    phandle = words[i]
                    if phandle == 0:  # an empty entry
                        i += 1
                        continue
                    entry = providers.get((phandle, cells_name))
                    if entry is None:
                        entry = providers[phandle, cells_name] = _provider(
                            by_phandle.get(phandle), cells_name)
                    provider, count = entry
                    if provider is None:
                        break
                    add(Reference(path, name, provider.path))
                    i += 1 + count
            elif kind == _KIND_SUPPLY:
                supplier = by_phandle.get(int.from_bytes(value[:4], "big"))
                if supplier is not None:
                    add(Reference(path, name, supplier.path))
            else:
                for phandle in _words(value):
                    referred = by_phandle.get(phandle)
                    if referred is not None:
                        add(Reference(path, name, referred.path))
        if "interrupts" in props and "interrupts-extended" not in props:
            try:
                parent = interrupt_parent(tree, node)
            except NodeError:
                parent = None
            if parent is not None:
                add(Reference(path, "interrupts", parent.path))
        if "interrupt-map" in props:
            for target in _interrupt_map(tree, node):
                add(Reference(path, "interrupt-map", target.path))
    out.extend(_console(tree))
    return out
