"""The direct structure-block walk (``rawtree._walk_struct``) against libfdt's own walk
(``rawtree._walk``), and its C copy (``_native.walk``) against it, on every shared real
board: the same nodes, parents, properties and phandles, in the same order."""

from __future__ import annotations

import random
from pathlib import Path

import _libfdt
import pytest

from platpass.errors import DeviceTreeLoadError
from platpass.firmware import rawtree


def _shape(tree: rawtree.RawTree) -> list[tuple[str, str | None, dict[str, bytes], int | None]]:
    return [(n.path, n.parent.path if n.parent is not None else None, n.props, n.phandle)
            for n in tree.nodes]


def test_both_walks_read_the_same_tree(shared_dtbs: list[Path]) -> None:
    for path in shared_dtbs:
        blob = path.read_bytes()
        ours = rawtree._walk_struct(blob, str(path))
        libfdts = rawtree._walk(bytearray(blob), str(path))
        assert _shape(ours) == _shape(libfdts), path
        assert ours.by_phandle.keys() == libfdts.by_phandle.keys()
        assert len(ours.nodes) > 10


def test_a_blob_that_ends_inside_a_node_is_refused() -> None:
    from platpass.firmware.devicetree import compile_dts

    blob = bytearray(compile_dts(text="/dts-v1/; / { a { b = <1>; }; };"))
    # drop the FDT_END_NODE tokens and FDT_END: only the validated path is ever given such
    # a blob by read_blob, but the walk itself must not invent a tree from it
    off_struct = int.from_bytes(blob[8:12], "big")
    size_struct = int.from_bytes(blob[36:40], "big")
    end = off_struct + size_struct
    blob[end - 12:end] = (4).to_bytes(4, "big") * 3  # FDT_NOP
    with pytest.raises(DeviceTreeLoadError, match="ends inside a node"):
        rawtree._walk_struct(bytes(blob), "cut")


# ------------------------------------------------------------------ the walk in C

needs_c = pytest.mark.skipif(rawtree.NATIVE is None,
                             reason="unreachable: the session start builds the module")


@needs_c
def test_the_c_walk_reads_what_the_python_walk_reads(shared_dtbs: list[Path]) -> None:
    """``_native.walk`` (what ``read_blob`` uses when it is built) against
    ``_walk_struct``, on every shared real board."""
    assert rawtree.NATIVE is not None
    for path in shared_dtbs:
        blob = path.read_bytes()
        ours = rawtree._walk_native(rawtree.NATIVE, blob, str(path))
        python = rawtree._walk_struct(blob, str(path))
        assert _shape(ours) == _shape(python), path
        assert [type(n) for n in ours.nodes] == [rawtree.RawNode] * len(ours.nodes)
        assert ours.by_phandle.keys() == python.by_phandle.keys()
        assert ours.by_path.keys() == python.by_path.keys()
        assert all(ours.by_path[p].path == p for p in ours.by_path)


@needs_c
def test_read_blob_uses_the_c_walk() -> None:
    from platpass.firmware.devicetree import compile_dts

    calls: list[int] = []
    real = rawtree.NATIVE

    class Spy:
        ABI = 1

        @staticmethod
        def walk(data: bytes, node_class: type) -> object:
            calls.append(len(data))
            assert real is not None
            return real.walk(data, node_class)

    blob = compile_dts(text="/dts-v1/; / { a: a { phandle = <7>; }; };")
    saved = rawtree.NATIVE
    rawtree.NATIVE = Spy  # type: ignore[assignment]
    try:
        tree = rawtree.read_blob(blob, "spy")
    finally:
        rawtree.NATIVE = saved
    assert calls == [len(blob)]
    assert tree.by_phandle[7].path == "/a"


@needs_c
def test_the_c_walk_refuses_what_the_python_walk_refuses() -> None:
    from platpass.firmware.devicetree import compile_dts

    assert rawtree.NATIVE is not None
    blob = bytearray(compile_dts(text="/dts-v1/; / { a { b = <1>; }; };"))
    off_struct = int.from_bytes(blob[8:12], "big")
    size_struct = int.from_bytes(blob[36:40], "big")
    end = off_struct + size_struct
    cut = bytearray(blob)
    cut[end - 12:end] = (4).to_bytes(4, "big") * 3  # FDT_NOP instead of the node ends
    bad_token = bytearray(blob)
    bad_token[off_struct:off_struct + 4] = (7).to_bytes(4, "big")
    bad_name = bytes(blob).replace(b"a\0", b"\xff\0", 1)
    for broken, message in ((cut, "ends inside a node"), (bad_token, "unexpected token 0x7")):
        for walk in (lambda b: rawtree._walk_struct(b, "x"),
                     lambda b: rawtree._walk_native(rawtree.NATIVE, b, "x")):
            with pytest.raises(DeviceTreeLoadError, match=message):
                walk(bytes(broken))
    with pytest.raises(UnicodeDecodeError):
        rawtree._walk_native(rawtree.NATIVE, bad_name, "x")
    with pytest.raises(DeviceTreeLoadError, match="not valid text"):
        rawtree.read_blob(bad_name, "x")


@needs_c
def test_the_c_walk_never_reads_outside_a_damaged_blob(shared_dtbs: list[Path]) -> None:
    """Damaged blobs, validated or not, straight to the C walk: it returns a tree or raises
    ValueError, and for a blob libfdt validates it reads what the Python walk reads."""
    assert rawtree.NATIVE is not None
    rng = random.Random(20261204)
    blob = min((p.read_bytes() for p in shared_dtbs[:6]), key=len)
    agreed = 0
    for _ in range(3000):
        damaged = bytearray(blob)
        for _ in range(rng.choice((1, 2, 8))):
            at = rng.randrange(len(damaged))
            damaged[at] = rng.randrange(256)
        if rng.random() < 0.2:
            del damaged[rng.randrange(40, len(damaged)):]
        data = bytes(damaged)
        try:
            ours = rawtree._walk_native(rawtree.NATIVE, data, "x")
        except (DeviceTreeLoadError, UnicodeDecodeError):
            ours = None
        if len(data) >= 40 and not _libfdt.fdt_check_header(bytearray(data)) and \
                not _libfdt.fdt_check_full(bytearray(data), len(data)):
            try:
                python = rawtree._walk_struct(data, "x")
            except (DeviceTreeLoadError, UnicodeDecodeError):
                python = None
            assert (ours is None) == (python is None)
            if ours is not None and python is not None:
                assert _shape(ours) == _shape(python)
                agreed += 1
    assert agreed > 50  # the comparison ran on validated, damaged blobs
