"""The ``platpass`` command line: one module per subcommand, registered below.

Each subcommand module exports ``register(subparsers)`` which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
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
        code = int(func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's exit-time flush
        return code
    except PlatpassError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``platpass scan | head -1``): nothing more
        # can be printed there; stop quietly instead of a traceback, and keep Python's
        # final flush of stdout from complaining again.
        _silence_stdout()
        return _fail("output closed by the reader (broken pipe)")
    except OSError as err:
        # A file or socket operation the command did not turn into its own message.
        where = f": {err.filename}" if err.filename else ""
        return _fail(f"{err.strerror or err}{where}")
    except RecursionError:
        return _fail("input nested too deeply")
    except MemoryError:
        return _fail("out of memory")
    except Exception as err:  # last resort: one line, never a traceback
        if os.environ.get("PLATPASS_DEBUG"):
            raise
        return _fail(f"internal error: {type(err).__name__}: {err} "
                     "(PLATPASS_DEBUG=1 shows the traceback; please report it)", code=70)


def _fail(message: str, code: int = 1) -> int:
    with contextlib.suppress(OSError, ValueError):
        print(f"platpass: error: {message}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover - python -m platpass.cli
    sys.exit(main())
