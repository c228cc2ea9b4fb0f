"""``platpass serve``: export devices over vfio-user, one AF_UNIX socket per device.

    platpass serve --sim --socket-dir /run/platpass          # every assignable sim device
    platpass serve --dtb board.dtb /soc/serial@ff1a0000 --socket /run/uart2.sock
    platpass serve --sim /soc@9000000/rtc@20000 --socket-path=/tmp/rtc.sock   # spec spelling

Nodes whose verdict is ``REFUSED_*`` are never exported: naming one is an error that
prints the evidence; with no node named, they are skipped (and listed). The process runs
until SIGTERM or SIGINT, then disconnects clients, resets the devices and removes its
sockets. It follows vfio-user's backend program conventions: it does not daemonize,
honours SIGTERM, and accepts ``--socket-path=PATH`` or ``--fd=FDNUM`` (an inherited
listening socket) for a single device.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import logging
import os
import pwd
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platpass.errors import HostError, PlatpassError
from platpass.firmware.model import DeviceNode
from platpass.host.backend import Backend
from platpass.host.privilege import add_privilege_arguments
from platpass.reactor import EpollReactor, Reactor

log = logging.getLogger(__name__)

#: backend name -> opener(node, reactor). The kernel backends register themselves by
#: providing ``open_backend(node, reactor)`` in the modules named below.
BackendOpener = Callable[[DeviceNode, Reactor], Backend]
_BACKEND_MODULES: dict[str, str] = {
    "uio": "platpass.host.uio",
    "vfio": "platpass.host.vfio_kernel",
}


def _open_sim(node: DeviceNode, reactor: Reactor) -> Backend:
    from platpass.host.simulated.board import open_sim_backend

    return open_sim_backend(node, reactor)


def backend_opener(name: str) -> BackendOpener:
    """The opener for backend ``name``; HostError saying why when it is unavailable."""
    if name == "sim":
        return _open_sim
    module_name = _BACKEND_MODULES.get(name)
    if module_name is None:
        raise HostError(f"unknown backend {name!r} (choose from sim, uio, vfio)")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise HostError(f"backend {name!r} is not available: {err}") from err
    opener = getattr(module, "open_backend", None)
    if opener is None:
        raise HostError(f"backend {name!r} is not available yet: {module_name} has no "
                        "open_backend(node, reactor)")
    return opener  # type: ignore[no-any-return]


#: Verdict evidence rules that forbid mapping any page of the device.
_NO_MAP_RULES = frozenset({"sub-page-region", "shared-page"})


@dataclass(frozen=True, slots=True)
class Export:
    """One device to serve: the node, its verdict, and where its socket goes."""

    node: DeviceNode
    verdict: Any
    driver: Any
    force_trap_all: bool


def _load_tree(args: argparse.Namespace) -> Any:
    from platpass.firmware import devicetree

    if args.sim:
        from platpass.host.simulated.board import load_board

        return load_board()
    if args.dtb:
        return devicetree.load_dtb(args.dtb)
    if args.dts:
        return devicetree.load_dts(args.dts)
    return devicetree.load_live()


def _reasons(assessment: Any) -> str:
    parts = []
    for evidence in getattr(assessment, "evidence", ()):
        rule = getattr(evidence, "rule", evidence)
        prop = getattr(evidence, "property", None)
        value = getattr(evidence, "value", None)
        text = str(rule)
        if prop:
            text += f" ({prop}" + (f" = {value}" if value not in (None, "") else "") + ")"
        parts.append(text)
    return "; ".join(parts) or "no evidence recorded"


def choose_exports(tree: Any, paths: list[str], *, everything_assignable: bool
                   ) -> tuple[list[Export], list[str]]:
    """Assess the tree and pick what to serve; returns (exports, refusal messages).

    A named node that is refused or unknown is a refusal; with no node named and
    ``everything_assignable``, every assignable device is exported.
    """
    from platpass.drivers.registry import default_registry
    from platpass.firmware.verdict import assess_tree

    assessments = {a.node.path: a for a in assess_tree(tree, default_registry())}
    refusals: list[str] = []
    chosen: list[Any] = []
    if paths:
        for path in paths:
            assessment = assessments.get(path)
            if assessment is None:
                refusals.append(f"{path}: no such device node in the tree")
                continue
            chosen.append(assessment)
    elif everything_assignable:
        chosen = list(assessments.values())
    exports: list[Export] = []
    for assessment in chosen:
        verdict = assessment.verdict
        if verdict.name.startswith("REFUSED"):
            if paths:
                refusals.append(f"{assessment.node.path}: {verdict.name}: "
                                f"{_reasons(assessment)}")
            continue
        if assessment.driver is None:
            refusals.append(f"{assessment.node.path}: no driver")
            continue
        # A region that is sub-page or shares a page with another device is never mapped.
        force = any(getattr(e, "rule", "") in _NO_MAP_RULES for e in assessment.evidence)
        exports.append(Export(assessment.node, verdict, assessment.driver, force))
    return exports, refusals


def _driver_instance(driver: Any, node: DeviceNode) -> Any:
    return driver(node) if isinstance(driver, type) else driver


def _socket_name(node: DeviceNode, taken: set[str]) -> str:
    name = node.name
    if name in taken:
        name = node.path.strip("/").replace("/", "-")
    taken.add(name)
    return f"{name}.sock"


def _uid(value: str) -> int:
    return int(value) if value.isdigit() else pwd.getpwnam(value).pw_uid


def _gid(value: str) -> int:
    return int(value) if value.isdigit() else grp.getgrnam(value).gr_gid


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    from platpass.host.privilege import drop_from_args, run_as_from_args
    from platpass.vfio_device.device import VfioDevice
    from platpass.vfio_device.iommu import EmulatedIommu
    from platpass.vfio_user.server import SocketOptions, VfioUserServer

    socket_path = args.socket or args.socket_path
    targets = [socket_path is not None, args.socket_dir is not None, args.fd is not None]
    if sum(targets) != 1:
        print("platpass serve: give exactly one of --socket/--socket-path, --socket-dir, "
              "--fd", file=sys.stderr)
        return 2
    backend_name = args.backend or ("sim" if args.sim else "uio")
    opener = backend_opener(backend_name)
    run_as = run_as_from_args(args)  # resolved first: an unknown user fails before any open
    tree = _load_tree(args)
    exports, refusals = choose_exports(tree, list(args.nodes),
                                       everything_assignable=not args.nodes)
    for refusal in refusals:
        print(f"platpass serve: refused: {refusal}", file=sys.stderr)
    if refusals and args.nodes:
        return 1
    if not exports:
        print("platpass serve: nothing to serve (name assignable nodes)", file=sys.stderr)
        return 1
    if (socket_path is not None or args.fd is not None) and len(exports) != 1:
        print(f"platpass serve: --socket/--fd serve one device, {len(exports)} chosen "
              "(name one node, or use --socket-dir)", file=sys.stderr)
        return 2
    options = SocketOptions(
        mode=int(args.mode, 8),
        owner=_uid(args.owner) if args.owner else None,
        group=_gid(args.group) if args.group else None,
        allow_uids=frozenset(_uid(u) for u in args.allow_uid),
        allow_gids=frozenset(_gid(g) for g in args.allow_gid),
    )
    reactor = EpollReactor()
    server = VfioUserServer(reactor)
    devices: list[Any] = []
    wake_r, wake_w = socket.socketpair()
    try:
        if args.socket_dir is not None:
            socket_dir = Path(args.socket_dir)
            if not socket_dir.is_dir() and run_as is not None:
                # A directory we create belongs to the user we become (as systemd's
                # RuntimeDirectory= with User=), so the server can remove its sockets on
                # exit; an existing directory is left as it is.
                socket_dir.mkdir(parents=True, mode=0o755)
                os.chown(socket_dir, run_as.uid, run_as.gid)
            socket_dir.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        for export in exports:
            backend = opener(export.node, reactor)
            device = VfioDevice(export.node, _driver_instance(export.driver, export.node),
                                backend, reactor, EmulatedIommu(deny=args.dma == "deny"),
                                force_trap_all=export.force_trap_all)
            devices.append(device)
            if args.fd is not None:
                server.serve_fd(export.node.path, device, args.fd, options)
                where = f"fd {args.fd}"
            else:
                path = Path(socket_path) if socket_path is not None else \
                    Path(args.socket_dir) / _socket_name(export.node, taken)
                server.serve(export.node.path, device, path, options)
                where = str(path)
            print(f"serving {export.node.path} ({', '.join(export.node.compatible)}; "
                  f"{export.verdict.name}; backend {backend_name}) on {where}", flush=True)
        # Signals wake the loop through a socket the reactor watches (poll is retried
        # after a handler runs, so the handler alone could not stop it).
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)

        def on_signal() -> None:
            with contextlib.suppress(BlockingIOError):
                wake_r.recv(64)
            reactor.stop()

        reactor.add_reader(wake_r.fileno(), on_signal)
        # Everything that needs root (backends opened, registers mapped, sockets bound
        # with their owner/mode) is done: from here on only held fds are used.
        creds = drop_from_args(run_as)
        if creds is not None:
            print(f"running as uid {creds.uids[0]} gid {creds.gids[0]} groups "
                  f"{list(creds.groups)}, no capabilities, no_new_privs", flush=True)
        print("ready", flush=True)
        reactor.run_forever()
        print("platpass serve: stopping", flush=True)
    finally:
        signal.set_wakeup_fd(-1)
        server.close()
        for device in devices:
            try:
                device.close()
            except PlatpassError as err:
                log.warning("closing %s: %s", device.node.path, err)
        wake_r.close()
        wake_w.close()
        reactor.close()
    return 0


def register(subparsers: Any) -> None:
    """Add ``serve`` to the command line."""
    parser = subparsers.add_parser(
        "serve", help="export devices over vfio-user sockets",
        description="Export assignable platform devices over vfio-user, one AF_UNIX "
                    "socket per device; runs until SIGTERM/SIGINT.")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dtb", metavar="FILE", help="flattened device tree to read")
    source.add_argument("--dts", metavar="FILE", help="device-tree source (compiled by dtc)")
    source.add_argument("--sim", action="store_true",
                        help="the built-in simulated board (default backend: sim)")
    parser.add_argument("nodes", nargs="*", metavar="NODE",
                        help="device node paths (default with --sim: every assignable one)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="socket for the one device")
    where.add_argument("--socket-path", metavar="PATH",
                       help="same as --socket (vfio-user backend convention)")
    parser.add_argument("--socket-dir", metavar="DIR",
                        help="directory for one socket per device, named after the node")
    parser.add_argument("--fd", type=int, metavar="FDNUM",
                        help="inherited listening AF_UNIX socket for the one device")
    parser.add_argument("--backend", choices=("sim", "uio", "vfio"),
                        help="how the device is reached (default: sim with --sim, else uio)")
    parser.add_argument("--dma", choices=("allow", "deny"), default="allow",
                        help="accept DMA_MAP into the emulated IOMMU, or refuse (ENOTSUP)")
    parser.add_argument("--mode", default="0600", help="socket file mode (octal)")
    parser.add_argument("--owner", help="socket file owner (name or uid)")
    parser.add_argument("--group", help="socket file group (name or gid); the group the "
                        "server runs as is given with --user USER:GROUP")
    parser.add_argument("--allow-uid", action="append", default=[], metavar="UID",
                        help="only peers with this uid (repeatable; or an allowed gid)")
    parser.add_argument("--allow-gid", action="append", default=[], metavar="GID",
                        help="only peers with this gid (repeatable; or an allowed uid)")
    add_privilege_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol events")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(name)s: %(message)s")
    try:
        int(args.mode, 8)
    except ValueError:
        print(f"platpass serve: --mode {args.mode!r} is not octal", file=sys.stderr)
        return 2
    try:
        return run(args)
    except KeyError as err:
        print(f"platpass serve: unknown user or group {err}", file=sys.stderr)
        return 2
    except OSError as err:
        raise HostError(str(err)) from err


__all__ = ["backend_opener", "choose_exports", "register", "run"]
