"""The assessment is the one place that says whether a device may be assigned or mapped."""

from __future__ import annotations

from pathlib import Path

from platpass.drivers.registry import default_registry
from platpass.firmware import devicetree
from platpass.firmware.verdict import assess_tree
from platpass.host.simulated.board import load_board


def test_may_assign_and_may_map_follow_the_verdict_and_its_rules(
        shared_dtbs: list[Path]) -> None:
    rk3568 = next(p for p in shared_dtbs if "rk3568" in p.name)
    assessments = [*assess_tree(load_board(), default_registry()),
                   *assess_tree(devicetree.load_dtb(rk3568), default_registry())]
    seen = set()
    for a in assessments:
        assert a.may_assign == a.verdict.assignable
        no_map = any(e.rule in ("sub-page-region", "shared-page") for e in a.evidence)
        assert a.may_map == (a.may_assign and not no_map)
        seen.add((a.may_assign, a.may_map))
    # Refused devices, mappable ones and sub-page (trapped-whole) ones all occur.
    assert {(False, False), (True, True), (True, False)} <= seen
