"""``platpass replay TRACE [--node NODE]``: feed a ``serve --trace`` record back to fresh
simulated devices and report every read that comes back different (see
:mod:`platpass.ops.trace`). Exit status 0: no divergence; 1: divergences listed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from platpass.ops.trace import replay


def _main(args: argparse.Namespace) -> int:
    report = replay(args.trace, args.node)
    if args.json:
        print(json.dumps({"accesses": report.accesses, "skipped": list(report.skipped),
                          "divergences": [asdict(d) for d in report.divergences]}, indent=2))
    else:
        for name, count in report.accesses.items():
            print(f"{name}: {count} accesses replayed")
        for name in report.skipped:
            print(f"{name}: skipped (no open record in the trace)")
        for divergence in report.divergences:
            print(f"DIVERGENCE {divergence}")
        print(f"{len(report.divergences)} divergences")
    return 1 if report.divergences else 0


def register(subparsers: Any) -> None:
    """Add ``replay`` to the command line."""
    parser = subparsers.add_parser(
        "replay", help="replay a serve --trace file against simulated devices",
        description="Feed the guest accesses recorded by 'platpass serve --trace' to fresh "
                    "simulated devices at their recorded times; report reads that differ.")
    parser.add_argument("trace", metavar="TRACE", help="trace file (JSON lines)")
    parser.add_argument("--node", metavar="NODE", help="replay only this device")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.set_defaults(func=_main)
