"""The raw device tree: nodes with their properties as bytes, read once through libfdt.

This is the only place that talks to ``libfdt``. libfdt validates the whole blob in C
(``fdt_check_full``); the validated structure block is then walked once, front to back, into
plain Python objects (token by token for a version 16+ blob, in C by ``_native.c`` when it
is built, else in Python; through ``fdt_next_node`` + ``fdt_first/next_property_offset``
for an older one); every later question (address
translation, interrupt routing, verdicts) is answered from these dicts without calling back
into libfdt. Walking once is what keeps ``platpass scan`` over hundreds of DTBs as fast as
``dtc`` decompiling them.

The raw layer never interprets a property; it only knows the two phandle properties, so that
phandle references can be followed in constant time.
"""

from __future__ import annotations

import struct
from types import ModuleType

import _libfdt
import libfdt

from platpass import accel
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

    def descendants(self, path: str) -> list[RawNode]:
        """The nodes below ``path`` (its subtree without itself), in blob order: parents
        before their children."""
        prefix = path.rstrip("/") + "/"
        return [node for node in self.nodes if node.path.startswith(prefix)]


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
        if libfdt.fdt_version(data) >= 16:
            if NATIVE is not None:
                return _walk_native(NATIVE, bytes(data), origin)
            return _walk_struct(bytes(data), origin)
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


#: ``platpass.firmware._native`` (:func:`_walk_struct` in C), or None when it is not used
#: (:data:`NATIVE_UNAVAILABLE` says why; :mod:`platpass.accel`).
NATIVE, NATIVE_UNAVAILABLE = accel.load("platpass.firmware._native", 1)


def _walk_native(native: ModuleType, data: bytes, origin: str) -> RawTree:
    """:func:`_walk_struct`, in C: the same nodes, in the same order, and the same
    errors. About a third of a scan was this walk in Python."""
    try:
        nodes, by_path = native.walk(data, RawNode)
    except UnicodeDecodeError:
        raise  # read_blob's message for a name that is not text
    except ValueError as err:
        raise DeviceTreeLoadError(f"{origin}: {err}") from None
    return RawTree(nodes, [], by_path)


_FDT_BEGIN_NODE, _FDT_END_NODE, _FDT_PROP, _FDT_NOP, _FDT_END = 1, 2, 3, 4, 9
_HEADER = struct.Struct(">10I")
_PROP = struct.Struct(">3I")


def _walk_struct(data: bytes, origin: str) -> RawTree:
    """What :func:`_walk` builds, read from the structure block's tokens directly.

    Called only once ``fdt_check_full`` has validated the whole structure block in C
    (token sequence, nesting, name and property bounds, string offsets), so the walk reads
    the tokens itself instead of paying three SWIG calls per property, which was a third of
    a scan. A name's or string's end is still searched within its block, and an unexpected
    token is a load error, never a guess. A node is created when it opens (parents before
    children, in blob order) and its properties fill its dict as they come.
    """
    (_magic, _total, off_struct, off_strings, _rsv, _version, _last, _cpu, size_strings,
     size_struct) = _HEADER.unpack_from(data, 0)
    end_struct = off_struct + size_struct
    strings = data[off_strings:off_strings + size_strings]
    names: dict[int, str] = {}
    prop = _PROP.unpack_from
    nodes: list[RawNode] = []
    by_path: dict[str, RawNode] = {}
    stack: list[RawNode] = []
    props: dict[str, bytes] = {}
    pos = off_struct
    # three words are read at every token (a property's tag, length and name offset in
    # one call); the blob is padded so that the last token's read stays inside it
    data += b"\0" * 8
    while pos < end_struct:
        tag, length, nameoff = prop(data, pos)
        if tag == _FDT_PROP:
            name = names.get(nameoff)
            if name is None:
                stop = strings.find(b"\0", nameoff)
                if stop < 0 or not stack:
                    raise DeviceTreeLoadError(f"{origin}: bad property at offset {pos}")
                name = names[nameoff] = strings[nameoff:stop].decode()
            start = pos + 12
            props[name] = data[start:start + length]
            pos = start + ((length + 3) & ~3)
        elif tag == _FDT_BEGIN_NODE:
            stop = data.find(b"\0", pos + 4, end_struct)
            if stop < 0:
                raise DeviceTreeLoadError(f"{origin}: bad node name at offset {pos}")
            props = {}
            if stack:
                parent = stack[-1]
                above = parent.path
                path = (above + "/" if above != "/" else "/") + data[pos + 4:stop].decode()
                node = RawNode(path, parent, props)
            else:
                path = "/"
                node = RawNode(path, None, props)
            stack.append(node)
            nodes.append(node)
            by_path[path] = node
            pos = (stop + 4) & ~3
        elif tag == _FDT_END_NODE:
            if not stack:
                raise DeviceTreeLoadError(f"{origin}: unbalanced node end at offset {pos}")
            node = stack.pop()
            if "phandle" in node.props or "linux,phandle" in node.props:
                node.phandle = _phandle_of(node.props)
            if not stack:
                break  # the root is closed: the walk is over
            props = stack[-1].props
            pos += 4
        elif tag == _FDT_NOP:
            pos += 4
        else:
            raise DeviceTreeLoadError(f"{origin}: unexpected token {tag:#x} at offset {pos}")
    if not nodes or stack:
        raise DeviceTreeLoadError(f"{origin}: the structure block ends inside a node")
    return RawTree(nodes, [], by_path)
