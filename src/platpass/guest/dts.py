"""A small device-tree source model for guest nodes, and its DTS text rendering.

Guest nodes are generated, then compiled by ``dtc``: generating source text (rather than
blobs) lets ``dtc`` check what we produce with all of its warnings, lets labels and
``&label`` references give overlays their ``__symbols__`` and ``__local_fixups__``, and gives
users a readable ``--format dts``. Values keep their type (cells, strings, raw bytes) so the
text compiles back to exactly the bytes we mean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: Characters a DTS label may hold (dtc: ``[a-zA-Z_][a-zA-Z0-9_]*``).
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_]")
#: Characters a node name may hold (DT spec 2.2.1, plus the unit-address ``@``).
_NODE_NAME_BAD = re.compile(r"[^A-Za-z0-9,._+-]")


@dataclass(frozen=True, slots=True)
class Ref:
    """A phandle reference to a labelled node of the same source (``<&label>``)."""

    label: str


Cell = int | Ref


@dataclass(frozen=True, slots=True)
class Cells:
    """A ``<...>`` list of 32-bit cells; each cell a number or a :class:`Ref`."""

    values: tuple[Cell, ...]

    def __post_init__(self) -> None:
        for value in self.values:
            if isinstance(value, int) and not 0 <= value <= 0xFFFFFFFF:
                raise ValueError(f"cell value {value:#x} does not fit 32 bits")


@dataclass(frozen=True, slots=True)
class Strings:
    """A string list (``"a", "b"``)."""

    values: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes copied from the host tree; rendered in the most readable exact form."""

    value: bytes


PropValue = Cells | Strings | Raw


def u32(*values: int) -> Cells:
    """Cells from plain numbers."""
    return Cells(tuple(values))


def u64_cells(value: int, cells: int = 2) -> tuple[int, ...]:
    """``value`` split into ``cells`` big-endian 32-bit cells (addresses, sizes)."""
    if value < 0 or value >> (32 * cells):
        raise ValueError(f"{value:#x} does not fit {cells} cells")
    return tuple((value >> (32 * (cells - 1 - i))) & 0xFFFFFFFF for i in range(cells))


def label_for(text: str) -> str:
    """A valid DTS label made from ``text`` (invalid characters become ``_``)."""
    label = _LABEL_BAD.sub("_", text)
    if not label or label[0].isdigit():
        label = "_" + label
    return label


def node_name_for(text: str) -> str:
    """A valid node name (without unit address) made from ``text``."""
    name = _NODE_NAME_BAD.sub("-", text) or "node"
    return name[:31]


@dataclass(slots=True)
class Node:
    """One DTS node: name (with unit address), optional label, ordered properties."""

    name: str
    label: str | None = None
    properties: dict[str, PropValue] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    #: Comment lines rendered above the node (provenance for humans).
    comments: tuple[str, ...] = ()

    def render(self, indent: int = 1) -> str:
        """The node as DTS text, indented by ``indent`` tabs."""
        pad = "\t" * indent
        lines = [f"{pad}/* {comment_safe(line)} */" for line in self.comments]
        head = f"{self.label}: {self.name}" if self.label else self.name
        lines.append(f"{pad}{head} {{")
        lines.extend(render_property(name, value, indent + 1)
                     for name, value in self.properties.items())
        for child in self.children:
            lines.append("")
            lines.append(child.render(indent + 1))
        lines.append(f"{pad}}};")
        return "\n".join(lines)


def comment_safe(text: str) -> str:
    """``text`` made safe inside a ``/* */`` comment (host paths are user data)."""
    return text.replace("*/", "* /").replace("\n", " ")


def render_property(name: str, value: PropValue, indent: int = 1) -> str:
    """One property line; an empty value renders as a boolean property."""
    pad = "\t" * indent
    text = render_value(value)
    return f"{pad}{name};" if text is None else f"{pad}{name} = {text};"


def render_value(value: PropValue) -> str | None:
    """The DTS right-hand side of ``value``; ``None`` for an empty (boolean) property."""
    if isinstance(value, Cells):
        if not value.values:
            return None
        return "<" + " ".join(_render_cell(c) for c in value.values) + ">"
    if isinstance(value, Strings):
        if not value.values:
            return None
        return ", ".join(_quote(s) for s in value.values)
    return _render_raw(value.value)


def _render_cell(cell: Cell) -> str:
    return f"&{cell.label}" if isinstance(cell, Ref) else f"{cell:#x}"


def _quote(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= byte <= 0x7E:
            out.append(ch)
        else:
            out.append(f"\\x{byte:02x}")
    return '"' + "".join(out) + '"'


def decode_strings(raw: bytes) -> tuple[str, ...] | None:
    """``raw`` as a NUL-separated printable string list, or None when it is not one."""
    if not raw or raw[-1] != 0:
        return None
    parts = raw[:-1].split(b"\0")
    if any(not part for part in parts):
        return None
    if any(b < 0x20 or b > 0x7E for part in parts for b in part):
        return None
    return tuple(part.decode("ascii") for part in parts)


def _render_raw(raw: bytes) -> str | None:
    if not raw:
        return None
    strings = decode_strings(raw)
    if strings is not None:
        return ", ".join(_quote(s) for s in strings)
    if len(raw) % 4 == 0:
        cells = [int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw), 4)]
        return "<" + " ".join(f"{c:#x}" for c in cells) + ">"
    return "[" + " ".join(f"{b:02x}" for b in raw) + "]"


def cells_of(raw: bytes) -> tuple[int, ...]:
    """Big-endian 32-bit cells of a raw property (trailing partial cell ignored)."""
    return tuple(int.from_bytes(raw[i:i + 4], "big") for i in range(0, len(raw) - 3, 4))


def render_nodes(nodes: Iterable[Node], indent: int = 1) -> str:
    """Several nodes separated by blank lines."""
    return "\n\n".join(node.render(indent) for node in nodes)


def header(comments: Sequence[str], *, plugin: bool = False) -> str:
    """``/dts-v1/;`` (and ``/plugin/;``) with a provenance comment block."""
    lines = ["/dts-v1/;"]
    if plugin:
        lines.append("/plugin/;")
    lines.append("")
    if comments:
        lines.append("/*")
        lines.extend(f" * {comment_safe(line)}" if line else " *" for line in comments)
        lines.append(" */")
        lines.append("")
    return "\n".join(lines)
