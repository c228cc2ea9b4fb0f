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

Socket activation (sd_listen_fds(3)): sockets passed in ``LISTEN_FDS`` for this pid are
used instead of binding — the one bound to the path a device would get (``--socket`` or
``--socket-dir``/name), else the one whose ``LISTEN_FDNAMES`` name is the node's name;
with no ``--socket``/``--socket-dir``/``--fd`` and a single device, the single passed
socket. READY=1 goes to ``$NOTIFY_SOCKET`` once every socket listens.

Operations (:mod:`platpass.ops`): ``--log-format json|text`` and ``--log-level``;
``--control PATH`` serves ``platpass status`` on a 0600 socket; ``--trace FILE`` records
every register access and interrupt event (traced devices map nothing, so every access is
seen) for ``platpass replay``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platpass.cli.options import (
    add_access_arguments,
    add_ops_arguments,
    add_socket_file_arguments,
    socket_options,
)
from platpass.errors import HostError
from platpass.firmware.model import DeviceNode
from platpass.host.backend import Backend
from platpass.host.privilege import add_privilege_arguments
from platpass.host.safepath import make_owned_directory
from platpass.ops.logs import add_logging_options, configure_logging
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
            if assessment in chosen:  # one device, one socket, one model
                refusals.append(f"{path}: named more than once")
                continue
            chosen.append(assessment)
    elif everything_assignable:
        chosen = list(assessments.values())
    exports: list[Export] = []
    for assessment in chosen:
        if not assessment.may_assign:
            if paths:
                refusals.append(f"{assessment.node.path}: {assessment.explanation}")
            continue
        if assessment.driver is None:
            refusals.append(f"{assessment.node.path}: no driver")
            continue
        exports.append(Export(assessment.node, assessment.verdict, assessment.driver,
                              not assessment.may_map))
    return exports, refusals


def _driver_instance(driver: Any, node: DeviceNode) -> Any:
    return driver(node) if isinstance(driver, type) else driver


def _tap_uart(backend: Backend, export: Export, path: str, out: Any) -> Any:
    """``--uart-output``: every byte a simulated UART transmits is appended to ``path`` (the
    far end of its wire); returns the open file (shared by every UART served)."""
    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "on_tx"):
        raise HostError(f"{export.node.path}: --uart-output needs a simulated UART "
                        "(--backend sim)")
    if out is None:
        out = _UartSink(path)
    model.on_tx = out.write
    return out


class _UartSink:
    """Where ``--uart-output`` bytes go. Opened O_NOFOLLOW (a root server never writes
    through a planted link) and O_NONBLOCK (a FIFO nobody reads fails at once instead of
    blocking the server). Like tracing and logging, it never stops serving: the first
    write that fails (a full filesystem, a full or closed pipe) stops the output with
    one warning."""

    def __init__(self, path: str) -> None:
        import os

        self.path = path
        try:
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                          | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                          0o600)
        except OSError as err:
            raise HostError(f"--uart-output {path}: {err.strerror or err}") from err

    def write(self, data: bytes) -> None:
        import os

        if self.fd is None:
            return
        try:
            os.write(self.fd, data)
        except OSError as err:
            log.warning("--uart-output %s: writing failed (%s); UART output stopped, "
                        "serving continues", self.path, err)
            self.close()

    def close(self) -> None:
        import os

        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _pci_view(device: Any, export: Export, requested: str) -> Any:
    """The device as a PCI function (``--pci``); PciIdError/PciPersonalityError say why
    not."""
    from platpass.vfio_device.pci.device import as_pci_function

    pci, why = as_pci_function(device, requested)
    print(f"{export.node.path}: PCI personality {why}", flush=True)
    return pci


def _socket_name(node: DeviceNode, taken: set[str]) -> str:
    name = node.name
    if name in taken:
        name = node.path.strip("/").replace("/", "-")
    taken.add(name)
    return f"{name}.sock"


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    from platpass.host.privilege import drop_from_args, run_as_from_args
    from platpass.ops import activation
    from platpass.ops.control import ControlServer
    from platpass.ops.trace import DeviceTracer, TraceWriter
    from platpass.vfio_device.device import VfioDevice, close_devices
    from platpass.vfio_device.iommu import EmulatedIommu
    from platpass.vfio_user.server import VfioUserServer

    socket_path = args.socket or args.socket_path
    targets = [socket_path is not None, args.socket_dir is not None, args.fd is not None]
    inherited = [] if args.fd is not None else activation.listen_fds()
    if sum(targets) != 1 and not (inherited and not any(targets)):
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
    options = socket_options(args, None if run_as is None else run_as.uid)
    reactor = EpollReactor()
    server = VfioUserServer(reactor)
    devices: list[Any] = []
    uart_out: Any = None
    writer = TraceWriter(args.trace, reactor.time, reactor=reactor) if args.trace else None
    control: ControlServer | None = None
    try:
        if args.socket_dir is not None:
            socket_dir = Path(args.socket_dir)
            if not socket_dir.is_dir() and run_as is not None:
                # A directory we create belongs to the user we become (as systemd's
                # RuntimeDirectory= with User=), so the server can remove its sockets on
                # exit; an existing directory is left as it is.
                make_owned_directory(socket_dir, run_as.uid, run_as.gid)
            socket_dir.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        for export in exports:
            opened_at = reactor.time()
            backend = opener(export.node, reactor)
            device = VfioDevice(export.node, _driver_instance(export.driver, export.node),
                                backend, reactor, EmulatedIommu(deny=args.dma == "deny"),
                                force_trap_all=export.force_trap_all or writer is not None)
            devices.append(device)
            if writer is not None:
                DeviceTracer(writer, device, export.node.path, opened_at=opened_at)
            if args.uart_output:
                uart_out = _tap_uart(backend, export, args.uart_output, uart_out)
            if args.pci is not None:
                device = devices[-1] = _pci_view(device, export, args.pci)
            passed = None
            if inherited:
                want = Path(socket_path) if socket_path is not None else \
                    Path(args.socket_dir) / _socket_name(export.node, set(taken)) \
                    if args.socket_dir is not None else None
                passed = activation.match_inherited(
                    inherited, path=None if want is None else str(want), name=export.node.name)
                if passed is None and want is None and len(inherited) == 1:
                    passed = inherited[0]
            if passed is not None:
                inherited.remove(passed)
                if args.socket_dir is not None:
                    _socket_name(export.node, taken)
                server.serve_fd(export.node.path, device, passed.fd, options)
                where = f"fd {passed.fd} ({passed.path or passed.name}, from the service "\
                    "manager)"
            elif args.fd is not None:
                server.serve_fd(export.node.path, device, args.fd, options)
                where = f"fd {args.fd}"
            elif socket_path is None and args.socket_dir is None:
                raise HostError(f"{export.node.path}: no passed socket (LISTEN_FDS) is "
                                "bound to it or named after it")
            else:
                path = Path(socket_path) if socket_path is not None else \
                    Path(args.socket_dir) / _socket_name(export.node, taken)
                server.serve(export.node.path, device, path, options)
                where = str(path)
            print(f"serving {export.node.path} ({', '.join(export.node.compatible)}; "
                  f"{export.verdict.name}; backend {backend_name}) on {where}", flush=True)
        reactor.stop_on_signals()
        for unused in inherited:
            log.warning("passed socket fd %d (%s) matches no device", unused.fd,
                        unused.path or unused.name, extra={"socket": unused.path})
        if args.control:
            control = ControlServer(reactor, server, args.control, name="platpass serve")
        # Everything that needs root (backends opened, registers mapped, sockets bound
        # with their owner/mode) is done: from here on only held fds are used.
        creds = drop_from_args(run_as)
        if creds is not None:
            print(f"running as uid {creds.uids[0]} gid {creds.gids[0]} groups "
                  f"{list(creds.groups)}, no capabilities, no_new_privs", flush=True)
        print("ready", flush=True)
        activation.notify("READY=1")
        reactor.run_forever()
        print("platpass serve: stopping", flush=True)
    finally:
        if control is not None:
            control.close()
        server.close()
        close_devices(devices, log)
        if uart_out is not None:
            uart_out.close()
        if writer is not None:
            writer.close()
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
    parser.add_argument("--pci", metavar="auto|VVVV:DDDD",
                        help="present each device as a PCI function (for vfio-user-pci "
                             "clients such as QEMU >= 10.1): auto picks the PCI ID that "
                             "unmodified Linux drivers bind for the device's family and "
                             "register layout, or name one")
    parser.add_argument("--uart-output", metavar="FILE",
                        help="simulated UARTs (--backend sim): append every byte the guest "
                             "transmits to FILE (the far end of the wire)")
    parser.add_argument("--dma", choices=("allow", "deny"), default="allow",
                        help="accept DMA_MAP into the emulated IOMMU, or refuse (ENOTSUP)")
    add_socket_file_arguments(parser)
    add_access_arguments(parser)
    add_privilege_arguments(parser)
    add_ops_arguments(parser)
    add_logging_options(parser)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log protocol events (same as --log-level info)")
    parser.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    level = "info" if args.verbose and args.log_level == "warning" else args.log_level
    configure_logging(args.log_format, level)
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
