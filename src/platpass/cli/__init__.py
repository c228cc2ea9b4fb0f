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
#: A module that registers a command whose name differs from the module's (``guest-dt``) or
#: several commands (``assign``/``release``) says so in :data:`COMMAND_MODULES`.
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


#: Command names that live in a module of another name.
COMMAND_MODULES: dict[str, str] = {
    "guest-dt": "guest_dt",
    "release": "assign",
    "down": "up",
}


def _module_for(argv: Sequence[str]) -> str | None:
    """The one subcommand module ``argv`` needs, or None when every one is needed.

    Importing every subcommand costs seconds on a slow guest (each pulls in its layer), so
    a command line that names its command loads only that command's module.
    """
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command is None:
        return None
    module = COMMAND_MODULES.get(command, command)
    return module if module in SUBCOMMANDS else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand, or only the one ``argv`` names."""
    from platpass.cli.reference import docs_epilog

    parser = argparse.ArgumentParser(
        prog="platpass",
        description="Pass simple non-DMA platform devices through to VMs without an IOMMU.",
        epilog=docs_epilog(),
    )
    parser.add_argument("--version", action="version", version=f"platpass {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    only = _module_for(argv) if argv is not None else None
    for name in (only,) if only else SUBCOMMANDS:
        importlib.import_module(f"platpass.cli.{name}").register(subparsers)
    for command, sub in subparsers.choices.items():  # every --help ends with the docs link
        sub.epilog = "\n\n".join(filter(None, (sub.epilog, docs_epilog(command))))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
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
