"""The ``platpass`` command line: one module per subcommand, registered below.

Each subcommand module exports ``register(subparsers)`` which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from platpass import __version__
from platpass.errors import PlatpassError

#: Subcommand modules under ``platpass.cli``, in the order ``--help`` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "scan",
    "serve",
    "guest_dt",
    "assign",
    "demo",
    "up",
    "status",
    "replay",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="platpass",
        description="Pass simple non-DMA platform devices through to VMs without an IOMMU.",
    )
    parser.add_argument("--version", action="version", version=f"platpass {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"platpass.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except PlatpassError as err:
        print(f"platpass: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover - python -m platpass.cli
    sys.exit(main())
