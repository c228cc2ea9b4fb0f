"""The direct structure-block walk (``rawtree._walk_struct``) against libfdt's own walk
(``rawtree._walk``) on every shared real board: the same nodes, parents, properties and
phandles, in the same order."""

from __future__ import annotations

from pathlib import Path

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
    import pytest

    from platpass.errors import DeviceTreeLoadError
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
