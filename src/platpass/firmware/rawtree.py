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

import _libfdt
import libfdt

from platpass.errors import DeviceTreeLoadError

__all__ = ["RawNode", "RawTree", "ResolverMemo", "read_blob"]


class RawNode:
    """One node: its path, its raw properties, and its place in the tree.

    Nodes point to their parent only (children are :meth:`RawTree.children`): without
    reference cycles a discarded tree is freed at once by reference counting, which keeps
    a scan over hundreds of trees from paying for garbage collection.
    """

    __slots__ = ("parent", "path", "phandle", "props")

    def __init__(self, path: str, parent: RawNode | None, props: dict[str, bytes],
                 phandle: int | None = None) -> None:
        self.path = path
        self.parent = parent
        self.props = props
        self.phandle = phandle

    @property
    def name(self) -> str:
        """Last path component (``serial@ff1a0000``); ``/`` for the root."""
        return self.path.rsplit("/", 1)[1] or "/"

    @property
    def depth(self) -> int:
        """0 for the root, 1 for its children..."""
        return 0 if self.parent is None else self.path.count("/")

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


class ResolverMemo:
    """One dict per question the resolver asks about a shared node, keyed by path/phandle."""

    __slots__ = ("clock_provider", "clock_rate", "controller_kind", "gic_encoded",
                 "irq_parent")

    def __init__(self) -> None:
        self.irq_parent: dict[str, object] = {}
        self.controller_kind: dict[str, str] = {}
        self.gic_encoded: dict[str, bool] = {}
        self.clock_provider: dict[int, object] = {}
        self.clock_rate: dict[str, int | None] = {}


class RawTree:
    """Every node of one blob, by path and by phandle, in blob order."""

    __slots__ = ("_children", "by_path", "by_phandle", "memo", "nodes", "problems", "root")

    def __init__(self, nodes: list[RawNode], problems: list[str],
                 by_path: dict[str, RawNode] | None = None) -> None:
        self.nodes = nodes
        self.root = nodes[0]
        self.by_path: dict[str, RawNode] = (
            by_path if by_path is not None else {node.path: node for node in nodes})
        self.by_phandle: dict[int, RawNode] = {}
        #: Per-tree memo for the resolver: facts about controllers and providers that
        #: every node referring to them would otherwise recompute.
        self.memo = ResolverMemo()
        self._children: dict[str, list[RawNode]] | None = None
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

    def children(self, node: RawNode) -> list[RawNode]:
        """The direct children of ``node``, in blob order."""
        if self._children is None:
            index: dict[str, list[RawNode]] = {}
            for child in self.nodes:
                if child.parent is not None:
                    index.setdefault(child.parent.path, []).append(child)
            self._children = index
        return list(self._children.get(node.path, ()))


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

    # The whole structure block is validated in C before the walk trusts any offset in it,
    # so a corrupt blob is refused instead of being half read.
    err = _libfdt.fdt_check_full(data, len(data))
    if err:
        raise DeviceTreeLoadError(f"{origin}: corrupt device tree: {libfdt.fdt_strerror(err)}")
    try:
        return _walk(data, origin)
    except (UnicodeDecodeError, SystemError) as err:
        # the SWIG binding decodes node and property names as UTF-8 and fails on others
        # (DT names are ASCII by the specification)
        raise DeviceTreeLoadError(
            f"{origin}: a node or property name is not valid text: {err.__cause__ or err}"
        ) from err


def _walk(data: bytearray, origin: str) -> RawTree:
    # The hot loop calls the SWIG extension (_libfdt) directly: libfdt.py's functions are
    # one-line forwarders, and skipping them saves a Python call per property.
    next_node = _libfdt.fdt_next_node
    first_prop = _libfdt.fdt_first_property_offset
    next_prop = _libfdt.fdt_next_property_offset
    prop_at = _libfdt.fdt_get_property_by_offset
    get_name = _libfdt.fdt_get_name

    notfound = -libfdt.NOTFOUND

    def properties(offset: int) -> dict[str, bytes]:
        props: dict[str, bytes] = {}
        poff = first_prop(data, offset)
        while poff >= 0:
            pname, pvalue, _ = prop_at(data, poff)
            props[pname] = bytes(pvalue)
            poff = next_prop(data, poff)
        if poff != notfound:
            raise DeviceTreeLoadError(
                f"{origin}: node at offset {offset}: {libfdt.fdt_strerror(poff)}")
        return props

    root_props = properties(0)
    root = RawNode("/", None, root_props, _phandle_of(root_props))
    nodes: list[RawNode] = [root]
    by_path: dict[str, RawNode] = {"/": root}
    # stack[d] is the last node seen at depth d; libfdt's depth grows one level at a time
    stack: list[RawNode] = [root]
    result = next_node(data, 0, 0)
    while True:
        if not isinstance(result, list):
            # libfdt returns a bare error code when the walk cannot continue.
            if result == notfound:
                break
            raise DeviceTreeLoadError(f"{origin}: {libfdt.fdt_strerror(result)}")
        offset, depth = result
        if depth < 1:
            # the root node has been closed: the walk is over
            break
        if offset < 0:
            raise DeviceTreeLoadError(f"{origin}: {libfdt.fdt_strerror(offset)}")
        name = get_name(data, offset)[0]
        if name is None:
            raise DeviceTreeLoadError(f"{origin}: bad node name at offset {offset}")
        # properties, inlined: this loop runs once per property of the whole tree
        props: dict[str, bytes] = {}
        poff = first_prop(data, offset)
        while poff >= 0:
            pname, pvalue, _ = prop_at(data, poff)
            props[pname] = bytes(pvalue)
            poff = next_prop(data, poff)
        if poff != notfound:
            raise DeviceTreeLoadError(
                f"{origin}: node at offset {offset}: {libfdt.fdt_strerror(poff)}")
        parent = stack[depth - 1]
        path = parent.path + "/" + name if depth > 1 else "/" + name
        node = RawNode(path, parent, props, _phandle_of(props)
                       if "phandle" in props or "linux,phandle" in props else None)
        if depth < len(stack):
            stack[depth] = node
        else:
            stack.append(node)
        nodes.append(node)
        by_path[path] = node
        result = next_node(data, offset, depth)
    return RawTree(nodes, [], by_path)
