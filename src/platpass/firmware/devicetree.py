"""Load a device tree and describe its devices as :class:`~platpass.firmware.model.DeviceNode`.

Sources: a ``.dtb`` file, a ``.dts`` file (compiled by ``dtc``), DTS text, the live host's
``/sys/firmware/fdt``, or a blob in memory. Loading reads the blob once through libfdt
(:mod:`.rawtree`); resolution (:mod:`.resolve`) then works on Python objects only, and each
node is resolved at most once (results are cached).

A tree that cannot be read raises :class:`~platpass.errors.DeviceTreeLoadError`. A node that
cannot be fully resolved never does: what went wrong is listed in its ``problems``.
"""

from __future__ import annotations

import os
from pathlib import Path

from platpass.errors import DeviceTreeLoadError, NodeError
from platpass.firmware.builders import new_device_node
from platpass.firmware.model import Clock, DeviceNode, Interrupt, MmioRange
from platpass.firmware.rawtree import RawNode, RawTree, read_blob
from platpass.firmware.resolve import (
    AddressMap,
    resolve_clocks,
    resolve_interrupts,
    resolve_regions,
    string_list,
)
from platpass.inputs import MAX_DTB_BYTES, MAX_SOURCE_BYTES, check_regular, read_input, run_tool

__all__ = [
    "LIVE_FDT",
    "DeviceTree",
    "compile_dts",
    "load_blob",
    "load_dtb",
    "load_dts",
    "load_dts_source",
    "load_live",
]

#: Where Linux exposes the blob it booted with.
LIVE_FDT = Path("/sys/firmware/fdt")

#: The usual ``status`` values, decoded once.
_STATUS = {b"okay\0": "okay", b"disabled\0": "disabled", b"ok\0": "ok",
           b"reserved\0": "reserved", b"fail\0": "fail"}

#: ``device_type`` values of nodes that are never devices, even with a ``reg``.
_NOT_DEVICE_TYPES = frozenset({"cpu", "memory"})


class DeviceTree:
    """One loaded device tree; ``source`` says where it came from (file path or label)."""

    def __init__(self, raw: RawTree, source: str) -> None:
        self.raw = raw
        self.source = source
        self._addresses = AddressMap(raw)
        self._resolved: dict[str, DeviceNode] = {}
        self._irqs: dict[str, tuple[tuple[Interrupt, ...], tuple[str, ...]]] = {}
        self._enabled_memo: dict[str, bool] = {}
        self._device_lists: dict[bool, list[DeviceNode]] = {}

    def __repr__(self) -> str:
        return f"DeviceTree({self.source!r}, {len(self.raw.nodes)} nodes)"

    def __len__(self) -> int:
        return len(self.raw.nodes)

    @property
    def problems(self) -> tuple[str, ...]:
        """Tree-wide findings that belong to no single node (duplicate phandles...)."""
        return tuple(self.raw.problems)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every node path, in blob order."""
        return tuple(node.path for node in self.raw.nodes)

    def raw_node(self, path: str) -> RawNode:
        """The raw node at ``path`` (or alias); raises NodeError if there is none."""
        node = self.raw.by_path.get(path)
        if node is None and not path.startswith("/"):
            aliases = self.raw.by_path.get("/aliases")
            target = aliases.props.get(path) if aliases is not None else None
            if target is not None:
                node = self.raw.by_path.get(target.rstrip(b"\0").decode("utf-8", "replace"))
        if node is None:
            raise NodeError(path, "no such node")
        return node

    def node(self, path: str) -> DeviceNode:
        """The resolved node at ``path`` (an absolute path or an alias name)."""
        return self._resolve(self.raw_node(path))

    def devices(self, all: bool = False) -> list[DeviceNode]:
        """Every MMIO device node, in blob order; with ``all``, every node but the root.

        Left out unless ``all``: nodes that are not memory-mapped (CPUs, children of buses
        without ``ranges``, clocks and regulators without ``reg``), memory and
        reserved-memory nodes.
        """
        cached = self._device_lists.get(all)
        if cached is None:
            cached = self._device_lists[all] = self._devices(all)
        return list(cached)

    def _devices(self, all: bool) -> list[DeviceNode]:
        out = []
        resolve = self._resolve
        if all:
            return [resolve(raw) for raw in self.raw.nodes if raw.parent is not None]
        cpu_space = self._addresses.cpu_space
        for raw in self.raw.nodes:
            parent = raw.parent
            if parent is None or "reg" not in raw.props:
                continue
            # cheap pre-check: children of buses without ranges (I2C, SPI...) are never
            # MMIO, so they are not resolved at all here
            if not cpu_space(parent)[0] or not self._may_be_device(raw):
                continue
            node = resolve(raw)
            if node.is_mmio:
                out.append(node)
        return out

    def ancestors(self, path: str) -> list[RawNode]:
        """The raw ancestors of the node at ``path``, parent first, root last."""
        return self.raw_node(path).ancestors()

    def effectively_enabled(self, path: str) -> bool:
        """The node and every ancestor are enabled (a disabled bus disables its children)."""
        return self._enabled(self.raw_node(path))

    def _enabled(self, raw: RawNode) -> bool:
        known = self._enabled_memo.get(raw.path)
        if known is not None:
            return known
        status = raw.props.get("status")
        result = status is None or status.rstrip(b"\0") in (b"okay", b"ok")
        if result and raw.parent is not None:
            result = self._enabled(raw.parent)
        self._enabled_memo[raw.path] = result
        return result

    def interrupt_users(self) -> list[tuple[str, bool, tuple[Interrupt, ...]]]:
        """``(path, effectively enabled, interrupts)`` of every node that has interrupts.

        The input of the shared-interrupt rule: every user of a line counts, MMIO or not.
        Nodes that are not devices get only their interrupts resolved, not a whole
        :class:`DeviceNode`.
        """
        out = []
        for raw in self.raw.nodes:
            props = raw.props
            if "interrupts" in props or "interrupts-extended" in props:
                irqs = self._interrupts(raw)[0]
                if irqs:
                    out.append((raw.path, self._enabled(raw), irqs))
        return out

    # ------------------------------------------------------------------ resolution

    @staticmethod
    def _may_be_device(raw: RawNode) -> bool:
        device_type = raw.props.get("device_type")
        if device_type is not None and device_type.rstrip(b"\0").decode(
                "utf-8", "replace") in _NOT_DEVICE_TYPES:
            return False
        parent = raw.parent
        return parent is None or parent.path != "/reserved-memory"

    def _interrupts(self, raw: RawNode) -> tuple[tuple[Interrupt, ...], tuple[str, ...]]:
        done = self._irqs.get(raw.path)
        if done is None:
            try:
                done = resolve_interrupts(self.raw, raw)
            except NodeError as err:
                done = ((), (err.message,))
            self._irqs[raw.path] = done
        return done

    def _resolve(self, raw: RawNode) -> DeviceNode:
        done = self._resolved.get(raw.path)
        if done is not None:
            return done
        props = raw.props
        problems: list[str] = []
        compatible = string_list(props.get("compatible"))
        status_raw = props.get("status")
        status = (_STATUS.get(status_raw) or status_raw.rstrip(b"\0").decode("utf-8", "replace")
                  if status_raw is not None else "okay")
        is_mmio = False
        regions: tuple[MmioRange, ...] = ()
        interrupts: tuple[Interrupt, ...] = ()
        clocks: tuple[Clock, ...] = ()
        if "reg" in props:
            try:
                is_mmio, regions, unmapped = resolve_regions(self._addresses, raw)
                problems.extend(unmapped)
            except NodeError as err:
                problems.append(err.message)
        if "interrupts" in props or "interrupts-extended" in props:
            interrupts, irq_problems = self._interrupts(raw)
            problems.extend(irq_problems)
        if "clocks" in props:
            clocks, clock_problems = resolve_clocks(self.raw, raw)
            problems.extend(clock_problems)
        node = new_device_node(
            raw.path, compatible, status, is_mmio and self._may_be_device(raw), regions,
            interrupts, clocks, dict(props), tuple(problems), raw.phandle)
        self._resolved[raw.path] = node
        return node


# ---------------------------------------------------------------------------- loaders


def load_blob(blob: bytes | bytearray, source: str = "<blob>") -> DeviceTree:
    """A tree from an in-memory flattened device tree; raises DeviceTreeLoadError."""
    return DeviceTree(read_blob(blob, source), source)


def load_dtb(path: str | os.PathLike[str]) -> DeviceTree:
    """A tree from a ``.dtb`` file; raises DeviceTreeLoadError (unreadable or not a DTB)."""
    # A regular file of at most 2 MiB, opened without blocking: /dev/zero, a FIFO or a
    # multi-gigabyte file is a one-line error, not a hang or an out-of-memory process.
    blob = read_input(path, limit=MAX_DTB_BYTES, what="device tree",
                      error=DeviceTreeLoadError)
    return load_blob(blob, str(path))


def load_live(path: str | os.PathLike[str] = LIVE_FDT) -> DeviceTree:
    """The tree the running kernel booted with (``/sys/firmware/fdt``, root only)."""
    return load_dtb(path)


def compile_dts(source: str | os.PathLike[str] | None = None, *, text: str | None = None,
                origin: str | None = None) -> bytes:
    """Compile DTS (a file, or ``text``) to a blob with ``dtc``.

    Raises DeviceTreeLoadError carrying dtc's own diagnostics when it refuses the source.
    """
    if (source is None) == (text is None):
        raise TypeError("give exactly one of source or text")
    args = ["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", "-"]
    if source is not None:
        label = str(source)
        check_regular(label, limit=MAX_SOURCE_BYTES, what="device-tree source",
                      error=DeviceTreeLoadError)
        parent = os.path.dirname(os.path.abspath(label))
        args += ["-i", parent, label]
    else:
        label = origin or "<dts text>"
        args.append("-")
    # Time- and memory-limited: /incbin/("/dev/zero") or an included FIFO must end.
    proc = run_tool(args, what=label, input=text.encode() if text is not None else None,
                    error=DeviceTreeLoadError)
    if proc.returncode != 0 or not proc.stdout:
        message = proc.stderr.decode("utf-8", "replace").strip() or f"exit {proc.returncode}"
        raise DeviceTreeLoadError(f"{label}: dtc failed: {message}")
    return proc.stdout


def load_dts(path: str | os.PathLike[str]) -> DeviceTree:
    """A tree from a ``.dts`` file, compiled by ``dtc``; raises DeviceTreeLoadError."""
    return load_blob(compile_dts(path), str(path))


def load_dts_source(text: str, origin: str = "<dts text>") -> DeviceTree:
    """A tree from DTS text (tests and tools that build DTS on the fly)."""
    return load_blob(compile_dts(text=text, origin=origin), origin)
