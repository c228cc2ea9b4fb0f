"""The firmware layer's C module (``platpass.firmware._native``) against the Python it
copies, on every DTB of the pinned kernel package (577 boards): the structure block walk
gives the same trees, and the reference walk the same references, in the same order."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import real_dtbs
from platpass.firmware import consumers, rawtree
from platpass.firmware.devicetree import DeviceTree, compile_dts

pytestmark = pytest.mark.skipif(rawtree.NATIVE is None,
                                reason="unreachable: the session start builds the module")


@pytest.fixture(scope="module")
def every_dtb() -> list[Path]:
    try:
        files = real_dtbs.ensure_all(say=lambda line: print(line, file=sys.stderr))
    except RuntimeError as err:
        pytest.fail(f"all DTBs of the pinned package: {err}")
    assert len(files) == real_dtbs.ALL_COUNT
    return files


def _shape(tree: rawtree.RawTree) -> list[tuple[str, str | None, dict[str, bytes], int | None]]:
    return [(n.path, n.parent.path if n.parent is not None else None, n.props, n.phandle)
            for n in tree.nodes]


def test_both_walks_and_both_reference_walks_agree_on_every_board(
        every_dtb: list[Path]) -> None:
    assert rawtree.NATIVE is not None
    total = 0
    for path in every_dtb:
        blob = path.read_bytes()
        raw = rawtree._walk_native(rawtree.NATIVE, blob, str(path))
        assert _shape(raw) == _shape(rawtree._walk_struct(blob, str(path))), path
        tree = DeviceTree(raw, str(path))
        for enabled in (tree.effectively_enabled, None):
            ours = consumers.references(raw, enabled)
            python = consumers._references(raw, enabled)
            assert ours == python, path
            assert all(type(ref) is consumers.Reference for ref in ours)
        total += len(ours)
    assert total > 200_000  # every reference of every node, enabled or not


def test_the_reference_walk_follows_the_rules_not_a_copy_of_them() -> None:
    """The rules stay in Python: a property the C walk has never seen is classified by
    ``consumers._kind``, a provider's cells come from ``consumers._provider``, and an
    interrupt parent that cannot be found is no reference, as in the Python walk."""
    tree = DeviceTree(rawtree.read_blob(compile_dts(text="""/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    clk: clk { #clock-cells = <1>; phandle = <1>; };
    reg: reg { phandle = <2>; };
    gpio: gpio { #gpio-cells = <2>; gpio-controller; phandle = <3>; };
    a { clocks = <1 5 0 1 6>; novel-name-supply = <2>; pinctrl-0 = <2 2>;
        reset-gpios = <3 1 0>; interrupts = <1>; };
    hog { gpio-hog; gpios = <3 1>; };
    broken { clocks = <1>; };
    dangling { clocks = <9 1>; };
};
"""), "t"), "t")
    refs = [str(r) for r in consumers.references(tree.raw)]
    assert refs == [str(r) for r in consumers._references(tree.raw)]
    assert refs == ["/a clocks -> /clk", "/a clocks -> /clk", "/a novel-name-supply -> /reg",
                    "/a pinctrl-0 -> /reg", "/a pinctrl-0 -> /reg", "/a reset-gpios -> /gpio",
                    "/broken clocks -> /clk"]


def test_a_node_class_that_is_not_plain_slots_is_called() -> None:
    """Nodes are stored straight into RawNode's slots; any other class is called as the
    Python walk calls it, and gives the same tree."""
    assert rawtree.NATIVE is not None
    blob = compile_dts(text="/dts-v1/; / { a { phandle = <5>; b { x = <1>; }; }; };")
    made: list[str] = []

    class Counted(rawtree.RawNode):
        def __init__(self, path: str, parent: rawtree.RawNode | None,
                     props: dict[str, bytes], phandle: int | None = None) -> None:
            made.append(path)
            super().__init__(path, parent, props, phandle)

    nodes, by_path = rawtree.NATIVE.walk(blob, Counted)
    plain, _ = rawtree.NATIVE.walk(blob, rawtree.RawNode)
    assert made == ["/", "/a", "/a/b"]  # each node made by a call, in blob order
    assert [(n.path, n.props, n.phandle) for n in nodes] == \
        [(n.path, n.props, n.phandle) for n in plain]
    assert by_path["/a/b"].parent is by_path["/a"] and by_path["/a"].phandle == 5
