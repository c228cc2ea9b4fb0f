"""The children an assigned device takes to the guest (pure logic over the raw host tree).

A device travels with its subtree (DESIGN.md section 3, rule 5): an I2C or SPI controller's
EEPROM, RTC or sensor goes into the guest's tree under the guest node, with its properties.
References are rewritten, not copied: phandle lists are walked with each provider's
``#*-cells`` (:func:`platpass.firmware.consumers.phandle_entries`), and a supplier inside the
subtree, or a device assigned with it, becomes a DTS label (``<&label args>``: dtc numbers
the guest's phandles afresh). A reference to a host-only provider is dropped: clocks,
supplies, pins, resets and power domains always (the guest has none of the host's), any
other one only where the verdict let the device through (the user waived it). An
``interrupts`` property inherits its parent on the host; in the guest it names it explicitly
when the parent travels too, and is dropped otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from platpass.errors import NodeError
from platpass.firmware.consumers import phandle_entries
from platpass.firmware.rawtree import RawNode, RawTree
from platpass.firmware.resolve import interrupt_parent
from platpass.firmware.verdict import guest_drops
from platpass.guest.dts import Cell, Cells, Node, PropValue, Raw, Ref, label_for

__all__ = ["guest_children"]

#: Child properties the guest's tree never holds as they are.
_RENUMBERED = frozenset({"phandle", "linux,phandle"})
#: ``*-names`` properties and the list each one names.
_NAMES = {"interrupt-names": "interrupts", "clock-names": "clocks", "reset-names": "resets",
          "dma-names": "dmas", "phy-names": "phys", "pwm-names": "pwms",
          "io-channel-names": "io-channels", "mbox-names": "mboxes",
          "pinctrl-names": "pinctrl-0", "power-domain-names": "power-domains"}


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def guest_children(tree: RawTree, device: str, label: str,
                   travelling: Mapping[str, str] | None = None
                   ) -> tuple[list[Node], dict[str, str]]:
    """The guest nodes of ``device``'s descendants, and what was dropped from them.

    ``label`` is the device's guest label; ``travelling`` maps the paths of the other
    devices that go to the same guest to their guest labels. Dropped properties are keyed
    ``"<path relative to the device>:<property>"``.
    """
    root = tree.by_path[device]
    descendants = tree.descendants(device)
    labels: dict[str, str] = {device: label, **dict(travelling or {})}
    tops = {device: label, **dict(travelling or {})}
    for node in tree.nodes:
        if node.phandle is None or node.path in labels:
            continue
        for top_path, top_label in tops.items():
            if node.path.startswith(top_path + "/"):
                # the label guest_children gives it when its own device is built
                labels[node.path] = label_for(
                    f"{top_label}_{node.path[len(top_path) + 1:]}")
                break

    def label_of(target: RawNode) -> str | None:
        if target.path in labels:
            return labels[target.path]
        return None

    dropped: dict[str, str] = {}
    built: dict[str, Node] = {}
    top: list[Node] = []
    for node in descendants:
        relative = node.path[len(device) + 1:]
        props: dict[str, PropValue] = {}
        for name, value in node.props.items():
            key = f"{relative}:{name}"
            if name in _RENUMBERED or name == "interrupt-parent":
                continue
            if name == "interrupts" and "interrupts-extended" not in node.props:
                parent = _interrupt_parent(tree, node)
                parent_label = label_of(parent) if parent is not None else None
                if parent_label is None:
                    dropped[key] = "interrupt parent stays with the host"
                    continue
                props["interrupt-parent"] = Cells((Ref(parent_label),))
                props[name] = Raw(value)
                continue
            entries = phandle_entries(tree, node, name)
            if entries is None:
                props[name] = Raw(value)
                continue
            cells: list[Cell] = []
            for target, args in entries:
                if target is None:
                    cells.append(0)
                    continue
                target_label = label_of(target)
                if target_label is None:
                    cells = []
                    break
                cells.append(Ref(target_label))
                cells.extend(args)
            if cells:
                props[name] = Cells(tuple(cells))
            else:
                dropped[key] = ("host-only provider" if guest_drops(name)
                                else "refers outside what the guest gets (waived)")
        for names, listed in _NAMES.items():
            if names in props and f"{relative}:{listed}" in dropped:
                del props[names]
                dropped[f"{relative}:{names}"] = f"names the dropped {listed}"
        if "interrupt-controller" in props and "#address-cells" not in props:
            # an interrupt provider states its address width (dtc's interrupt_provider check)
            props["#address-cells"] = Cells((0,))
        if "ranges" not in props and not any(
                child.parent is node and "reg" in child.props for child in descendants):
            for cells_prop in ("#address-cells", "#size-cells"):
                if cells_prop in props and cells_prop in node.props:
                    del props[cells_prop]
                    dropped[f"{relative}:{cells_prop}"] = "no child with reg below it"
        guest = Node(name=node.name, label=labels.get(node.path) if node.phandle else None,
                     properties=props, comments=(f"host {node.path}",))
        built[node.path] = guest
        parent = node.parent
        if parent is root:
            top.append(guest)
        elif parent is not None and parent.path in built:
            built[parent.path].children.append(guest)
    return top, dropped


def _interrupt_parent(tree: RawTree, node: RawNode) -> RawNode | None:
    try:
        return interrupt_parent(tree, node)
    except NodeError:
        return None
