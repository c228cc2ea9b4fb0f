"""A no-map rule added in one place (``NO_MAP_RULES`` in the verdict module) is honoured by
every entry point that builds devices: ``serve``, ``assign`` and the KVM client's board."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from platpass.assembly import DevicePlan, TreeSource, choose_exports, load_tree
from platpass.cli import build_parser
from platpass.firmware import verdict
from platpass.host.simulated.board import board_dtb


@pytest.fixture
def driver_rule_forbids_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every claimed device carries a ``driver`` evidence rule: make it a no-map rule."""
    monkeypatch.setattr(verdict, "NO_MAP_RULES", verdict.NO_MAP_RULES | {"driver"})


def _serve_exports() -> list[bool]:
    exports, _ = choose_exports(load_tree(TreeSource("sim")), [], everything_assignable=True)
    return [e.force_trap_all for e in exports]


def _assign_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DevicePlan:
    """Run ``platpass assign`` for the sim board's PL031 up to where it would serve (the
    device binding and the server replaced) and return the plan it serves."""
    from platpass.cli import assign
    from platpass.host import binding

    dtb = tmp_path / "board.dtb"
    dtb.write_bytes(board_dtb())
    node = next(n for n in load_tree(TreeSource("sim")).devices()
                if "arm,pl031" in n.compatible)
    fake = SimpleNamespace(name="9010000.pl031", bus="platform", of_node=node.path,
                           driver=None)
    monkeypatch.setattr(assign, "device_for_node", lambda _name: fake)
    monkeypatch.setattr(binding, "bind_device", lambda _dev, _drv: (None, None))
    served: list[DevicePlan] = []

    def serve(_args: object, _access: object, _state: object, _device: object,
              plan: DevicePlan) -> int:
        served.append(plan)
        return 0

    monkeypatch.setattr(assign, "_serve", serve)
    args = build_parser(["assign"]).parse_args(
        ["assign", node.path, "--socket", str(tmp_path / "rtc.sock"), "--dtb", str(dtb),
         "--foreground", "--state-dir", str(tmp_path / "state")])
    assert args.func(args) == 0
    return served[0]


def test_without_the_new_rule_some_devices_map(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert not all(_serve_exports())
    assert not _assign_plan(tmp_path, monkeypatch).export.force_trap_all


@pytest.mark.usefixtures("driver_rule_forbids_mapping")
def test_serve_traps_every_device() -> None:
    traps = _serve_exports()
    assert traps
    assert all(traps)


@pytest.mark.usefixtures("driver_rule_forbids_mapping")
def test_assign_traps_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _assign_plan(tmp_path, monkeypatch).export.force_trap_all


@pytest.mark.usefixtures("driver_rule_forbids_mapping")
def test_kvm_board_traps_every_device() -> None:
    from platpass.vmm.simboard import SimBoardServer

    with SimBoardServer(("arm,pl011", "arm,pl031")) as board:
        assert board.devices
        assert all(served.device.force_trap_all for served in board.devices)
        assert not any(served.device.region_info(0).mappable
                   for served in board.devices)
