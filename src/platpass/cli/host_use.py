"""``--override PATH=RULE[,RULE]``: the user waives a host-use finding for one device.

For users who know a consumer the device tree names is unused on their board. Only the
rules in :data:`~platpass.firmware.verdict.WAIVABLE_RULES` can be waived, per device and per
rule; a waiver stays in the device's evidence and every one used is logged as a warning.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from platpass.assembly.plan import merge_groups
from platpass.errors import NodeError
from platpass.firmware.devicetree import DeviceTree
from platpass.firmware.verdict import WAIVABLE_RULES


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


def together(text: str) -> tuple[str, ...]:
    """One ``NODE,NODE[,...]`` argument (an argparse ``type``): a co-assignment group."""
    names = _names(text)
    if len(names) < 2:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a co-assignment group names two or more nodes: NODE,NODE[,...]")
    return names


def add_together_option(parser: argparse.ArgumentParser, *, first: str = "") -> None:
    """Add ``--together`` (repeatable): nodes that go to one guest together, judged as one
    subtree (issue rule 3: a child that needs an interrupt or GPIO of another device may
    go only with that device). ``first`` names the node the command already takes."""
    parser.add_argument(
        "--together", action="append", type=together if not first else _names,
        default=[], metavar="NODE,NODE" if not first else "NODE[,NODE]",
        help="co-assignment group: these nodes go to one guest together, so a child of one "
             "may use an interrupt or GPIO of another"
             + (f" ({first} is a member; the others must be assigned to that guest too)"
                if first else "") + "; repeatable")


def _names(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NODE[,NODE]")
    return names


def groups_for(tree: DeviceTree, given: Iterable[Iterable[str]], *,
               strict: bool = True) -> list[list[str]]:
    """Co-assignment groups as node paths of ``tree`` (aliases resolved); groups that share
    a node are merged into one (a node goes to one guest, so all its groups are one).
    A name the tree does not have raises NodeError (``strict``: a group that silently lost
    a member would judge the others without it), or drops its whole group (``scan`` over
    several trees, where a group is about the trees that have all its nodes)."""
    resolved: list[list[str]] = []
    for group in given:
        try:
            resolved.append([tree.raw_node(name).path for name in group])
        except NodeError:
            if strict:
                raise
    return merge_groups(resolved)
