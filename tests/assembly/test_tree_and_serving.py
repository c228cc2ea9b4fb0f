"""The assembly layer: tree sources, plans, opening and the one shutdown path."""

from __future__ import annotations

from pathlib import Path

import pytest

from platpass import assembly
from platpass.assembly import (
    DevicePlan,
    Export,
    Listen,
    NoLiveTreeError,
    Serving,
    TreeSource,
    choose_exports,
    find_export,
    load_tree,
    open_device,
    sim_opener,
)
from platpass.assembly import tree as tree_module
from platpass.cli import build_parser
from platpass.errors import DeviceTreeLoadError, HostError
from platpass.host.simulated.board import board_dtb
from platpass.host.simulated.clock import ManualClock
from platpass.reactor import EpollReactor


def test_tree_sources_load_the_same_board(tmp_path: Path) -> None:
    dtb = tmp_path / "board.dtb"
    dtb.write_bytes(board_dtb())
    sim = [n.path for n in load_tree(TreeSource("sim")).devices()]
    assert [n.path for n in load_tree(TreeSource("dtb", dtb)).devices()] == sim
    with pytest.raises(ValueError):
        TreeSource("dtb")
    with pytest.raises(DeviceTreeLoadError, match=r"missing\.dtb"):
        load_tree(TreeSource("dtb", tmp_path / "missing.dtb"))


def test_no_live_tree_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_module, "LIVE_FDT", tmp_path / "fdt")
    with pytest.raises(NoLiveTreeError, match="no live device tree"):
        load_tree(TreeSource("live"))


def test_serve_without_a_tree_source_says_what_to_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from platpass.cli.serve import run

    monkeypatch.setattr(tree_module, "LIVE_FDT", tmp_path / "fdt")
    args = build_parser(["serve"]).parse_args(["serve", "--socket-dir",
                                                str(tmp_path / "socks")])
    assert run(args) == 2  # (not main(): that configures the process's logging)
    err = capsys.readouterr().err
    assert "no live device tree" in err
    assert "--sim" in err and "--dtb FILE" in err


def test_refusals_carry_the_assessment_explanation() -> None:
    tree = load_tree(TreeSource("sim"))
    exports, refusals = choose_exports(tree, [], everything_assignable=True)
    assert exports and not refusals
    refused = next(n.path for n in tree.devices() if n.path not in
                   {e.node.path for e in exports} and n.enabled)
    found = find_export(tree, refused)
    assert isinstance(found, str)
    assert found.startswith(f"{refused}: REFUSED_")
    assert isinstance(find_export(tree, exports[0].node.path), Export)
    assert find_export(tree, "/nowhere") == "/nowhere: no such device node in the tree"


def test_listen_needs_exactly_one_place() -> None:
    with pytest.raises(ValueError):
        Listen()
    with pytest.raises(ValueError):
        Listen(Path("/x.sock"), 3)
    assert str(Listen(fd=3)) == "fd 3"


def test_open_device_releases_the_backend_when_the_device_cannot_be_built() -> None:
    exports, _ = choose_exports(load_tree(TreeSource("sim")), [], everything_assignable=True)
    export = exports[0]
    closed = []

    class Broken:
        regions = ()
        irq_count = 99

        def close(self) -> None:
            closed.append(True)

    reactor = EpollReactor()
    try:
        with pytest.raises(Exception, match="interrupt lines"):
            open_device(export, lambda _node, _reactor: Broken(), reactor)  # type: ignore
    finally:
        reactor.close()
    assert closed == [True]


def test_serving_shuts_everything_down_once(tmp_path: Path) -> None:
    exports, _ = choose_exports(load_tree(TreeSource("sim")), [], everything_assignable=True)
    opener = sim_opener(lambda: ManualClock(0.0))
    events: list[str] = []

    class Control:
        def close(self, *, unlink: bool = True) -> None:
            events.append(f"control unlink={unlink}")

    class Recorder:
        def attach(self, device: object, name: str, opened_at: float) -> None:
            events.append(f"traced {name}")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            events.append("recorder closed")

    with Serving() as serving:
        serving.recorder = Recorder()
        for i, export in enumerate(exports[:2]):
            serving.add(DevicePlan(export, "sim", Listen(tmp_path / f"d{i}.sock")), opener)
        serving.control = Control()
        assert all(d.force_trap_all for d in serving.devices)  # traced: nothing mapped
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d0.sock", "d1.sock"]
    assert events == [f"traced {exports[0].node.path}", f"traced {exports[1].node.path}",
                      "control unlink=True", "recorder closed"]
    assert list(tmp_path.iterdir()) == []
    assert serving.devices == []


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(HostError, match="unknown backend 'pci'"):
        assembly.backend_opener("pci")


def test_every_backend_assign_offers_has_an_opener() -> None:
    from platpass.cli import build_parser

    parser = build_parser(["assign"])
    for backend in ("kmod", "uio", "vfio"):
        args = parser.parse_args(["assign", "/x", "--socket", "/x.sock", "--backend", backend])
        assert callable(assembly.backend_opener(args.backend))
