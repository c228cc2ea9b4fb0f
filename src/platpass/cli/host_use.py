"""``--override PATH=RULE[,RULE]``: the user waives a host-use finding for one device.

For users who know a consumer the device tree names is unused on their board. Only the
rules in :data:`~platpass.firmware.verdict.WAIVABLE_RULES` can be waived, per device and per
rule; a waiver stays in the device's evidence and every one used is logged as a warning.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable

from platpass.errors import NodeError
from platpass.firmware.devicetree import DeviceTree
from platpass.firmware.verdict import WAIVABLE_RULES, Assessment

log = logging.getLogger("platpass.override")


def override(text: str) -> tuple[str, frozenset[str]]:
    """One ``PATH=RULE[,RULE]`` argument (an argparse ``type``)."""
    path, sep, rules = text.rpartition("=")
    names = frozenset(r.strip() for r in rules.split(",") if r.strip())
    if not sep or not path or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH=RULE[,RULE]")
    bad = sorted(names - WAIVABLE_RULES)
    if bad:
        raise argparse.ArgumentTypeError(
            f"{', '.join(bad)} cannot be waived; only {', '.join(sorted(WAIVABLE_RULES))} "
            f"can (bus-master and shared refusals never)")
    return path, names


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--override`` (repeatable) to ``parser``."""
    parser.add_argument(
        "--override", action="append", type=override, default=[],
        metavar="PATH=RULE[,RULE]",
        help="waive a host-use finding for one device (rules: "
             f"{', '.join(sorted(WAIVABLE_RULES))}); logged, and kept in the evidence")


def overrides_for(tree: DeviceTree,
                  given: Iterable[tuple[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
    """The overrides that name a node of ``tree`` (aliases resolved), by node path."""
    out: dict[str, frozenset[str]] = {}
    for name, rules in given:
        try:
            path = tree.raw_node(name).path
        except NodeError:
            continue
        out[path] = out.get(path, frozenset()) | rules
    return out


def log_waivers(source: str, assessments: Iterable[Assessment]) -> None:
    """A warning for every waiver the user's overrides made."""
    for assessment in assessments:
        for evidence in assessment.waived:
            log.warning("%s: %s: %s (--override)", source, assessment.node.path,
                        evidence.value)
