"""An independent labeller of host use, to audit the verdict's host-in-use rules against.

Shares no code with :mod:`platpass.firmware` (it reads the blob with pylibfdt, libfdt's own
Python binding, and implements the consumer walk afresh from the issue's property list and
Linux's ``drivers/of/property.c`` ``of_supplier_bindings``), so a mistake in one is unlikely
to be repeated in the other.

A device (a node path) is *host-used* when an available node outside its subtree (the node
and its descendants) refers to a node inside it, through a supplier property walked by its
provider's ``#*-cells``, an ``interrupt-parent`` (even on a node without interrupts: Linux's
fw_devlink links that too, and its children inherit it), the inherited interrupt parent of a
node that has ``interrupts``, an ``interrupt-map`` parent, or ``/chosen``'s ``stdout-path``
(the host's console). Broader than the verdict there on purpose: an auditor errs on the side
of "used".

Usage as a script (prints every host-used device with the reference that makes it so)::

    python3 tests/hostuse_labeller.py FILE.dtb...
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import libfdt

#: phandle + args lists: property -> the provider property giving the argument count.
WITH_ARGS = {
    "clocks": "#clock-cells", "interconnects": "#interconnect-cells",
    "iommus": "#iommu-cells", "mboxes": "#mbox-cells", "io-channels": "#io-channel-cells",
    "io-backends": "#io-backend-cells", "dmas": "#dma-cells",
    "power-domains": "#power-domain-cells", "hwlocks": "#hwlock-cells",
    "phys": "#phy-cells", "pwms": "#pwm-cells", "resets": "#reset-cells",
    "msi-parent": "#msi-cells", "interrupts-extended": "#interrupt-cells",
    "thermal-sensors": "#thermal-sensor-cells", "sound-dai": "#sound-dai-cells",
    "mux-controls": "#mux-control-cells", "access-controllers": "#access-controller-cells",
    "pses": "#pse-cells", "gpio": "#gpio-cells", "gpios": "#gpio-cells",
    "cooling-device": "#cooling-cells",
}
#: Providers whose cells count may be absent (taken as 0).
ZERO_IF_ABSENT = {"#msi-cells", "#io-backend-cells", "#access-controller-cells", "#pse-cells"}
#: Lists of plain phandles.
PLAIN = {"extcon", "nvmem-cells", "wakeup-parent", "leds",
         "backlight", "panel", "remote-endpoint", "post-init-providers", "power-supplies",
         "i2c-bus", "ddc-i2c-bus", "i2c-parent", "phy-handle", "sfp"}
PINCTRL = re.compile(r"pinctrl-[0-9]+")
#: *-gpios / *-gpio names that are not GPIO lists.
NOT_GPIO = {"nr-gpios", "ngpios", "snps,nr-gpios", "gpio-line-names", "gpio-ranges",
            "gpio-reserved-ranges"}


@dataclass
class Node:
    path: str
    props: dict[str, bytes]
    parent: Node | None
    children: list[Node] = field(default_factory=list)


def u32s(value: bytes) -> list[int]:
    return list(struct.unpack(f">{len(value) // 4}I", value[:len(value) // 4 * 4]))


class Blob:
    """Every node of a blob, by path and by phandle."""

    def __init__(self, data: bytes) -> None:
        fdt = libfdt.FdtRo(data)
        self.nodes: dict[str, Node] = {}
        self.phandles: dict[int, Node] = {}
        stack: list[tuple[int, Node | None]] = [(0, None)]
        while stack:
            offset, parent = stack.pop()
            path = fdt.get_path(offset)
            props: dict[str, bytes] = {}
            poff = fdt.first_property_offset(offset, [libfdt.FDT_ERR_NOTFOUND])
            while poff >= 0:
                prop = fdt.get_property_by_offset(poff)
                props[prop.name] = bytes(prop)
                poff = fdt.next_property_offset(poff, [libfdt.FDT_ERR_NOTFOUND])
            node = Node(path, props, parent)
            self.nodes[path] = node
            if parent is not None:
                parent.children.append(node)
            for key in ("phandle", "linux,phandle"):
                if len(props.get(key, b"")) == 4:
                    self.phandles[u32s(props[key])[0]] = node
            child = fdt.first_subnode(offset, [libfdt.FDT_ERR_NOTFOUND])
            kids = []
            while child >= 0:
                kids.append(child)
                child = fdt.next_subnode(child, [libfdt.FDT_ERR_NOTFOUND])
            stack.extend((k, node) for k in reversed(kids))

    def available(self, node: Node | None) -> bool:
        """Linux creates a device only when the node and every ancestor are okay."""
        while node is not None:
            status = node.props.get("status")
            if status is not None and status.rstrip(b"\0") not in (b"okay", b"ok"):
                return False
            node = node.parent
        return True

    def cells(self, node: Node, name: str) -> int | None:
        value = node.props.get(name)
        if value is None or len(value) != 4:
            return 0 if name in ZERO_IF_ABSENT else None
        return u32s(value)[0]

    def walk_args(self, words: list[int], cells_name: str) -> Iterator[Node]:
        i = 0
        while i < len(words):
            if words[i] == 0:
                i += 1
                continue
            provider = self.phandles.get(words[i])
            if provider is None:
                return
            count = self.cells(provider, cells_name)
            if count is None:
                return
            yield provider
            i += 1 + count

    def irq_parent(self, node: Node) -> Node | None:
        """As of_irq_find_parent: follow interrupt-parent, else the parent, until a node with
        #interrupt-cells."""
        current: Node | None = node
        for _ in range(64):
            if current is None:
                return None
            ip = current.props.get("interrupt-parent")
            nxt = self.phandles.get(u32s(ip)[0]) if ip and len(ip) == 4 else current.parent
            if nxt is None:
                return None
            if "#interrupt-cells" in nxt.props:
                return nxt
            current = nxt
        return None

    def suppliers(self, node: Node) -> Iterator[tuple[str, Node]]:
        """(property, supplier node) for every reference ``node`` makes."""
        props = node.props
        for name, value in props.items():
            words = u32s(value)
            if not words:
                continue
            if name == "interrupt-parent":
                s = self.phandles.get(words[0])
                if s is not None:
                    yield name, s
            elif name in WITH_ARGS:
                if name in ("gpio", "gpios") and "gpio-hog" in props:
                    continue
                for s in self.walk_args(words, WITH_ARGS[name]):
                    yield name, s
            elif (name.endswith(("-gpios", "-gpio")) and name not in NOT_GPIO
                  and not name.endswith("nr-gpios")):
                for s in self.walk_args(words, "#gpio-cells"):
                    yield name, s
            elif name.endswith("-supply") and len(value) == 4:
                s = self.phandles.get(words[0])
                if s is not None:
                    yield name, s
            elif name in PLAIN or PINCTRL.fullmatch(name):
                for w in words:
                    s = self.phandles.get(w)
                    if s is not None:
                        yield name, s
            elif name == "interrupt-map":
                yield from (("interrupt-map", s) for s in self.map_parents(node, words))
        if "interrupts" in props and "interrupts-extended" not in props:
            parent = self.irq_parent(node)
            if parent is not None:
                yield "interrupts", parent

    def map_parents(self, node: Node, words: list[int]) -> Iterator[Node]:
        child_cells = (self.cells(node, "#address-cells") or 0) \
            + (self.cells(node, "#interrupt-cells") or 0)
        i = 0
        while i + child_cells < len(words):
            parent = self.phandles.get(words[i + child_cells])
            if parent is None or "#interrupt-cells" not in parent.props:
                return
            yield parent
            i += child_cells + 1 + (self.cells(parent, "#address-cells") or 0) \
                + (self.cells(parent, "#interrupt-cells") or 0)

    def console(self) -> Node | None:
        chosen = self.nodes.get("/chosen")
        if chosen is None:
            return None
        raw = chosen.props.get("stdout-path") or chosen.props.get("linux,stdout-path")
        if not raw:
            return None
        target = raw.split(b"\0")[0].decode().split(":")[0]
        if not target.startswith("/"):
            aliases = self.nodes.get("/aliases")
            alias = aliases.props.get(target) if aliases else None
            if alias is None:
                return None
            target = alias.split(b"\0")[0].decode()
        return self.nodes.get(target)


def within(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def host_used(blob: Blob, devices: list[str]) -> dict[str, str]:
    """For each of ``devices`` the host uses: one reference that says so."""
    wanted = set(devices)
    out: dict[str, str] = {}
    skip = {"/aliases", "/__symbols__", "/__fixups__", "/__local_fixups__"}
    for node in blob.nodes.values():
        if node.path in skip or not blob.available(node):
            continue
        for prop, supplier in blob.suppliers(node):
            holder: Node | None = supplier
            while holder is not None:
                if holder.path in wanted and holder.path not in out \
                        and not within(node.path, holder.path):
                    out[holder.path] = f"{node.path} {prop} -> {supplier.path}"
                holder = holder.parent
    console = blob.console()
    holder = console
    while holder is not None:
        if holder.path in wanted:
            out.setdefault(holder.path, f"/chosen stdout-path -> {console.path}")  # type: ignore[union-attr]
        holder = holder.parent
    return out


def main(argv: list[str]) -> int:
    for name in argv:
        blob = Blob(Path(name).read_bytes())
        devices = [p for p, n in blob.nodes.items() if "reg" in n.props and p != "/"]
        for path, why in sorted(host_used(blob, devices).items()):
            print(f"{name}: {path}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
