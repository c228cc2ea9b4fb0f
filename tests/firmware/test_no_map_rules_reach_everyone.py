"""A no-map rule added in one place (``NO_MAP_RULES`` in the verdict module) is honoured by
every entry point that builds devices: ``serve``, ``assign`` and the KVM client's board."""

from __future__ import annotations

import pytest

from platpass.firmware import verdict
from platpass.host.simulated.board import load_board


@pytest.fixture
def driver_rule_forbids_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every claimed device carries a ``driver`` evidence rule: make it a no-map rule."""
    monkeypatch.setattr(verdict, "NO_MAP_RULES", verdict.NO_MAP_RULES | {"driver"})


def test_without_the_new_rule_some_devices_map() -> None:
    from platpass.cli.serve import choose_exports

    exports, _ = choose_exports(load_board(), [], everything_assignable=True)
    assert any(not e.force_trap_all for e in exports)


@pytest.mark.usefixtures("driver_rule_forbids_mapping")
def test_serve_traps_every_device() -> None:
    from platpass.cli.serve import choose_exports

    exports, _ = choose_exports(load_board(), [], everything_assignable=True)
    assert exports
    assert all(e.force_trap_all for e in exports)


@pytest.mark.usefixtures("driver_rule_forbids_mapping")
def test_kvm_board_traps_every_device() -> None:
    from platpass.vmm.simboard import SimBoardServer

    with SimBoardServer(("arm,pl011", "arm,pl031")) as board:
        assert board.devices
        assert all(served.device.force_trap_all for served in board.devices)
