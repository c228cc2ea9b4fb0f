"""``platpass up CONFIG`` / ``platpass down CONFIG``: serve what a configuration file
describes, and stop it (see :mod:`platpass.ops.service` and docs/operations.md).

    platpass up /etc/platpass/lab.toml            # returns once every socket listens
    platpass up --foreground /etc/platpass/lab.toml   # systemd: platpass@lab.service
    platpass up --check /etc/platpass/lab.toml    # validate only; nothing is started
    platpass down /etc/platpass/lab.toml
"""

from __future__ import annotations

import argparse
import sys

from platpass.ops import service
from platpass.ops.config import load_config


def _up(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.check:
        service.plan(config, probe_sockets=False)
        print(f"{config.path}: {len(config.devices)} devices, valid")
        return 0
    if args.foreground:
        return service.run_foreground(config)
    pid = service.up_background(config, args.config, timeout=args.timeout)
    print(f"up: {config.name} (server pid {pid}; control {config.control_path})",
          flush=True)
    return 0


def _down(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    was_running = service.running_pid(config) is not None
    problems = service.down(config, timeout=args.timeout)
    for problem in problems:
        print(f"platpass down: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"down: {config.name}" + ("" if was_running else " (was not running)"),
          flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``up`` and ``down`` to the command line."""
    parser = subparsers.add_parser(
        "up", help="serve every device a TOML configuration file describes",
        description="Validate the configuration, check every node's verdict and socket, "
                    "then serve all of it (sim devices in one server process, uio/vfio "
                    "devices through platpass assign). All or nothing.")
    parser.add_argument("config", metavar="CONFIG", help="TOML configuration file")
    parser.add_argument("--foreground", action="store_true",
                        help="serve in this process until SIGTERM (systemd)")
    parser.add_argument("--check", action="store_true",
                        help="validate the file and the nodes' verdicts (sockets are not probed: "
                             "systemd may hold them); start nothing")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the background server (default 30)")
    parser.set_defaults(func=_up)
    parser = subparsers.add_parser(
        "down", help="stop what platpass up started; restore host drivers",
        description="Stop the configuration's server (SIGTERM, SIGKILL after --timeout) and "
                    "make sure every uio/vfio device is back on its host driver.")
    parser.add_argument("config", metavar="CONFIG", help="TOML configuration file")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the server before SIGKILL (default 10)")
    parser.set_defaults(func=_down)
