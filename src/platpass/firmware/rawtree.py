"""The raw device tree: nodes with their properties as bytes, read once through libfdt.

This is the only place that talks to ``libfdt``. A blob is walked once, front to back
(``fdt_next_node`` + ``fdt_first/next_property_offset``), into plain Python objects; every
later question (address translation, interrupt routing, verdicts) is answered from these
dicts without calling back into libfdt. Walking once is what keeps ``platpass scan`` over
hundreds of DTBs as fast as ``dtc`` decompiling them: the cost of a libfdt call from Python
is paid per property exactly once.

The raw layer never interprets a property; it only knows the two phandle properties, so that
phandle references can be followed in constant time.
"""

from __future__ import annotations

import struct

import libfdt

from platpass.errors import DeviceTreeLoadError

__all__ = ["RawNode", "RawTree", "read_blob"]


class RawNode:
    """One node: its path, its raw properties, and its place in the tree."""

    __slots__ = ("children", "depth", "name", "parent", "path", "phandle", "props")

    def __init__(self, name: str, path: str, parent: RawNode | None, depth: int,
                 props: dict[str, bytes]) -> None:
        self.name = name
        self.path = path
        self.parent = parent
        self.depth = depth
        self.props = props
        self.children: list[RawNode] = []
        self.phandle: int | None = None

    def __repr__(self) -> str:
        return f"RawNode({self.path!r})"

    def ancestors(self) -> list[RawNode]:
        """Parent first, root last."""
        out: list[RawNode] = []
        node = self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out


class RawTree:
    """Every node of one blob, by path and by phandle, in blob order."""

    __slots__ = ("by_path", "by_phandle", "memo", "nodes", "problems", "root")

    def __init__(self, nodes: list[RawNode], problems: list[str]) -> None:
        self.nodes = nodes
        self.root = nodes[0]
        self.by_path: dict[str, RawNode] = {node.path: node for node in nodes}
        self.by_phandle: dict[int, RawNode] = {}
        #: Per-tree memo for the resolver (facts about controllers asked once per node).
        self.memo: dict[tuple[str, str], object] = {}
        #: Tree-wide findings (duplicate phandles...) that belong to no single node.
        self.problems = problems
        for node in nodes:
            if node.phandle is not None:
                other = self.by_phandle.get(node.phandle)
                if other is not None:
                    problems.append(
                        f"phandle {node.phandle:#x} used by both {other.path} and {node.path}")
                    continue
                self.by_phandle[node.phandle] = node


_U32 = struct.Struct(">I")


def _phandle_of(props: dict[str, bytes]) -> int | None:
    value = props.get("phandle")
    if value is None:
        value = props.get("linux,phandle")
    if value is None or len(value) != 4:
        return None
    phandle = _U32.unpack(value)[0]
    return phandle if phandle not in (0, 0xFFFFFFFF) else None


def read_blob(blob: bytes | bytearray, origin: str = "<blob>") -> RawTree:
    """Walk a flattened device tree once into a :class:`RawTree`.

    Raises :class:`DeviceTreeLoadError` (with libfdt's reason and ``origin``) when the blob
    is not a device tree or its structure block is broken.
    """
    data = bytearray(blob)
    if len(data) < 40:
        raise DeviceTreeLoadError(f"{origin}: {len(data)} bytes is too short for a device tree")
    err = libfdt.fdt_check_header(data)
    if err:
        raise DeviceTreeLoadError(f"{origin}: not a device tree: {libfdt.fdt_strerror(err)}")
    if libfdt.fdt_totalsize(data) > len(data):
        raise DeviceTreeLoadError(
            f"{origin}: truncated: header says {libfdt.fdt_totalsize(data)} bytes, "
            f"got {len(data)}")

    # Local names for the hot loop: one global lookup less per call.
    next_node = libfdt.fdt_next_node
    first_prop = libfdt.fdt_first_property_offset
    next_prop = libfdt.fdt_next_property_offset
    prop_at = libfdt.fdt_get_property_by_offset
    get_name = libfdt.fdt_get_name

    nodes: list[RawNode] = []
    stack: list[RawNode] = []
    offset, depth = 0, 0
    while True:
        name = get_name(data, offset)[0]
        if name is None:
            raise DeviceTreeLoadError(f"{origin}: bad node name at offset {offset}")
        props: dict[str, bytes] = {}
        poff = first_prop(data, offset)
        while poff >= 0:
            pname, pvalue, _ = prop_at(data, poff)
            if pname is None:
                raise DeviceTreeLoadError(f"{origin}: bad property at offset {poff}")
            props[pname] = bytes(pvalue)
            poff = next_prop(data, poff)
        if poff != -libfdt.NOTFOUND:
            raise DeviceTreeLoadError(
                f"{origin}: node at offset {offset}: {libfdt.fdt_strerror(poff)}")
        del stack[depth:]
        if depth == 0:
            if nodes:
                raise DeviceTreeLoadError(f"{origin}: more than one root node")
            node = RawNode("/", "/", None, 0, props)
        else:
            if len(stack) != depth:
                raise DeviceTreeLoadError(f"{origin}: node nesting broken at offset {offset}")
            parent = stack[-1]
            path = f"/{name}" if depth == 1 else f"{parent.path}/{name}"
            node = RawNode(name, path, parent, depth, props)
            parent.children.append(node)
        node.phandle = _phandle_of(props)
        nodes.append(node)
        stack.append(node)
        result = next_node(data, offset, depth)
        if not isinstance(result, list):
            # libfdt returns a bare error code when the walk cannot continue.
            if result == -libfdt.NOTFOUND:
                break
            raise DeviceTreeLoadError(f"{origin}: {libfdt.fdt_strerror(result)}")
        offset, depth = result
        if depth < 1:
            # the root node has been closed: the walk is over
            break
        if offset < 0:
            raise DeviceTreeLoadError(f"{origin}: {libfdt.fdt_strerror(offset)}")
    return RawTree(nodes, [])
