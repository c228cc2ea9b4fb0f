"""``platpass status``: what running platpass servers are doing, from their control sockets.

    platpass status                       # every <run_dir>/*.ctl (default /run/platpass)
    platpass status /etc/platpass/lab.toml --json
    platpass status --control /tmp/sockets/.control
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from platpass.errors import OpsError
from platpass.ops.config import DEFAULT_RUN_DIR, load_config
from platpass.ops.control import query


def _targets(args: argparse.Namespace) -> list[Path]:
    targets = [Path(c) for c in args.control]
    for config in args.configs:
        targets.append(load_config(config).control_path)
    if not targets:
        targets = sorted(Path(args.run_dir).glob("*.ctl"))
    return targets


def render(status: dict[str, Any]) -> str:
    """The human form of one server's status."""
    lines = [f"{status.get('name') or 'platpass serve'} (pid {status['pid']}, control "
             f"{status['control']})"]
    for device in status["devices"]:
        if "served_by" in device:
            lines.append(f"  {device['name']}: {device['backend']} on {device['socket']} "
                         f"(served by {device['served_by']})")
            continue
        client = device["client"]
        who = (f"client pid {client['pid']} uid {client['uid']}" if client
               else "no client")
        lines.append(f"  {device['name']} on {device['socket']}: {who}; "
                     f"refused clients {device['refused_clients']}")
        lines.append(f"    accesses: trapped {device['trapped_reads']} reads "
                     f"{device['trapped_writes']} writes, backend {device['backend_reads']} "
                     f"reads {device['backend_writes']} writes, refused "
                     f"{device['refused_accesses']}; resets {device['resets']}")
        for irq in device["irqs"]:
            state = "masked" if irq["masked"] else "unmasked"
            lines.append(f"    irq {irq['index']} ({'level' if irq['level'] else 'edge'}, "
                         f"{state}): fired {irq['fired']} delivered {irq['delivered']} "
                         f"spurious {irq['spurious']}")
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    targets = _targets(args)
    if not targets:
        print(f"platpass status: no control socket under {args.run_dir} (nothing is up)",
              file=sys.stderr)
        return 1
    results: list[dict[str, Any]] = []
    answered: list[Path] = []
    failed = 0
    for target in targets:
        try:
            results.append(query(target))
            answered.append(target)
        except OpsError as err:
            failed += 1
            print(f"platpass status: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps({"servers": results}, indent=2))
        return 1 if failed else 0
    for target, result in zip(answered, results, strict=True):
        try:
            text = render(result)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            # Not what a platpass server answers (another program, another version).
            failed += 1
            print(f"platpass status: {target}: unexpected status reply "
                  f"({type(err).__name__}: {str(err)[:200]})", file=sys.stderr)
            continue
        print(text)
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    """Add ``status`` to the command line."""
    parser = subparsers.add_parser(
        "status", help="devices, clients and counters of running servers",
        description="Ask running platpass servers (their control sockets) for their "
                    "devices, connected clients, IRQ and trapped-access counts.")
    parser.add_argument("configs", nargs="*", metavar="CONFIG",
                        help="configuration files of platpass up (their control sockets)")
    parser.add_argument("--control", action="append", default=[], metavar="PATH",
                        help="a control socket (serve --control, <socket-dir>/.control)")
    parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                        help=f"where to look for *.ctl with no target (default "
                             f"{DEFAULT_RUN_DIR})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_main)
