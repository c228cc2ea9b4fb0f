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
import os
import sys
from pathlib import Path

from platpass.assembly import (
    DevicePlan,
    Export,
    Listen,
    NoLiveTreeError,
    Serving,
    TreeSource,
    backend_opener,
    choose_exports,
    load_tree,
)
from platpass.assembly.plan import log_waivers
from platpass.cli.host_use import (
    add_override_option,
    add_together_option,
    groups_for,
    overrides_for,
)
from platpass.cli.options import (
    add_access_arguments,
    add_ops_arguments,
    add_privilege_arguments,
    add_socket_file_arguments,
    run_as_from_args,
    socket_options,
)
from platpass.errors import HostError, NodeError
from platpass.firmware.model import DeviceNode
from platpass.host.privilege import RunAs
from platpass.host.safepath import make_owned_directory
from platpass.ops.activation import InheritedSocket
from platpass.ops.logs import add_logging_options, configure_logging
from platpass.ops.workers import parse_workers
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_user import native

log = logging.getLogger(__name__)


def tree_source(args: argparse.Namespace) -> TreeSource:
    """The tree the command line names (``--sim``, ``--dtb``, ``--dts``; else the live one)."""
    if args.sim:
        return TreeSource("sim")
    if args.dtb:
        return TreeSource("dtb", Path(args.dtb))
    if args.dts:
        return TreeSource("dts", Path(args.dts))
    return TreeSource("live")


def _tap_uart(device: VfioDevice, path: str, out: _UartSink | None) -> _UartSink:
    """``--uart-output``: every byte a simulated UART transmits is appended to ``path`` (the
    far end of its wire); returns the open file (shared by every UART served)."""
    model = getattr(device.backend, "model", None)
    if model is None or not hasattr(model, "on_tx"):
        raise HostError(f"{device.node.path}: --uart-output needs a simulated UART "
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
        self.path = path
        try:
            self.fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                          | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                          0o600)
        except OSError as err:
            raise HostError(f"--uart-output {path}: {err.strerror or err}") from err

    def write(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, data)
        except OSError as err:
            log.warning("--uart-output %s: writing failed (%s); UART output stopped, "
                        "serving continues", self.path, err)
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _socket_name(node: DeviceNode, taken: set[str]) -> str:
    name = node.name
    if name in taken:
        name = node.path.strip("/").replace("/", "-")
    taken.add(name)
    return f"{name}.sock"


def _listens(args: argparse.Namespace, exports: list[Export],
             inherited: list[InheritedSocket]) -> list[Listen]:
    """Where each export listens: a socket passed by the service manager (LISTEN_FDS) bound
    to its path or named after it, ``--fd``, ``--socket`` or ``--socket-dir``/name."""
    from platpass.ops import activation

    socket_path = args.socket or args.socket_path
    taken: set[str] = set()
    listens: list[Listen] = []
    for export in exports:
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
            listens.append(Listen(fd=passed.fd, label=f"fd {passed.fd} "
                                  f"({passed.path or passed.name}, from the service manager)"))
        elif args.fd is not None:
            listens.append(Listen(fd=args.fd))
        elif socket_path is None and args.socket_dir is None:
            raise HostError(f"{export.node.path}: no passed socket (LISTEN_FDS) is "
                            "bound to it or named after it")
        else:
            listens.append(Listen(Path(socket_path) if socket_path is not None else
                                  Path(args.socket_dir) / _socket_name(export.node, taken)))
    return listens


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    from platpass.host.privilege import drop_privileges
    from platpass.ops import activation
    from platpass.ops.control import ControlServer
    from platpass.ops.trace import TraceWriter

    socket_path = args.socket or args.socket_path
    try:
        workers = parse_workers(args.workers)
    except ValueError as err:
        print(f"platpass serve: --workers: {err}", file=sys.stderr)
        return 2
    if workers > 1 and args.trace:
        print("platpass serve: --workers N (N > 1) does not combine with --trace: a trace "
              "is one process's timeline, which replay follows in order", file=sys.stderr)
        return 2
    targets = [socket_path is not None, args.socket_dir is not None, args.fd is not None]
    inherited = [] if args.fd is not None else activation.listen_fds()
    if sum(targets) != 1 and not (inherited and not any(targets)):
        print("platpass serve: give exactly one of --socket/--socket-path, --socket-dir, "
              "--fd", file=sys.stderr)
        return 2
    backend_name = args.backend or ("sim" if args.sim else "uio")
    backend_opener(backend_name)  # an unavailable backend fails before anything is read
    run_as = run_as_from_args(args)  # resolved first: an unknown user fails before any open
    try:
        tree = load_tree(tree_source(args))
    except NoLiveTreeError as err:
        print(f"platpass serve: {err}; name the device tree to serve: --sim (the simulated "
              "board), --dtb FILE or --dts FILE", file=sys.stderr)
        return 2
    try:
        groups = groups_for(tree, args.together)
    except NodeError as err:
        print(f"platpass serve: --together: {err}", file=sys.stderr)
        return 2
    exports, refusals = choose_exports(tree, list(args.nodes),
                                       everything_assignable=not args.nodes,
                                       overrides=overrides_for(tree, args.override),
                                       groups=groups)
    log_waivers(tree.source, [e.assessment for e in exports])
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
    plans = [DevicePlan(export, backend_name, listen, options, dma_deny=args.dma == "deny",
                        pci=args.pci)
             for export, listen in zip(exports, _listens(args, exports, inherited),
                                       strict=True)]
    if workers > 1:
        if args.uart_output and (backend_name != "sim" or any(
                p.export.driver.family != "uart" for p in plans)):
            print("platpass serve: --uart-output needs simulated UARTs only (--backend sim, "
                  "UART nodes)", file=sys.stderr)
            return 2
        return _run_workers(args, plans, workers, backend_name, run_as)
    uart_out: _UartSink | None = None
    try:
        with Serving(client_threads=args.client_threads) as serving:
            if args.trace:
                serving.recorder = TraceWriter(args.trace, serving.reactor.time,
                                               reactor=serving.reactor)
            _make_socket_dir(args, run_as)
            for plan in plans:
                device = serving.add(plan)
                if args.uart_output:
                    uart_out = _tap_uart(device, args.uart_output, uart_out)
                if plan.pci is not None:
                    print(f"{plan.node.path}: PCI personality "
                          f"{serving.pci_accounts[plan.node.path]}", flush=True)
                print(f"serving {plan.node.path} ({', '.join(plan.node.compatible)}; "
                      f"{plan.export.verdict.name}; backend {backend_name}) on {plan.listen}",
                      flush=True)
            serving.reactor.stop_on_signals()
            for unused in inherited:
                log.warning("passed socket fd %d (%s) matches no device", unused.fd,
                            unused.path or unused.name, extra={"socket": unused.path})
            if args.control:
                serving.control = ControlServer(serving.reactor, serving.server, args.control,
                                                name="platpass serve")
            # Everything that needs root (backends opened, registers mapped, sockets bound
            # with their owner/mode) is done: from here on only held fds are used.
            if run_as is not None:
                creds = drop_privileges(run_as)
                print(f"running as uid {creds.uids[0]} gid {creds.gids[0]} groups "
                      f"{list(creds.groups)}, no capabilities, no_new_privs", flush=True)
            print(f"trapped accesses: {native.describe()}", flush=True)
            print("ready", flush=True)
            activation.notify("READY=1")
            serving.serve_forever()
            print("platpass serve: stopping", flush=True)
    finally:
        if uart_out is not None:
            uart_out.close()
    return 0


def _make_socket_dir(args: argparse.Namespace, run_as: RunAs | None) -> None:
    """``--socket-dir``, made when missing. A directory we create belongs to the user we
    become (as systemd's RuntimeDirectory= with User=), so the server can remove its
    sockets on exit; an existing directory is left as it is."""
    if args.socket_dir is None:
        return
    socket_dir = Path(args.socket_dir)
    if not socket_dir.is_dir() and run_as is not None:
        make_owned_directory(socket_dir, run_as.uid, run_as.gid)
    socket_dir.mkdir(parents=True, exist_ok=True)


def _run_workers(args: argparse.Namespace, plans: list[DevicePlan], workers: int,
                 backend_name: str, run_as: RunAs | None) -> int:
    """Serve ``plans`` from several worker processes (:mod:`platpass.ops.workers`). With
    ``--user`` the supervisor stays root (it starts workers, and a worker opens its
    devices before dropping to the user); each worker drops once its devices are open."""
    from platpass.ops import activation
    from platpass.ops.workers import Supervisor, placement

    _make_socket_dir(args, run_as)
    on_open = None
    if args.uart_output:
        path = args.uart_output
        sinks: list[_UartSink] = []   # one per worker: each appends (O_APPEND) its bytes

        def on_open(_plan: DevicePlan, device: VfioDevice) -> None:
            sinks[:] = [_tap_uart(device, path, sinks[0] if sinks else None)]

    slots = placement(workers, len(plans))
    with Supervisor(plans, workers, control=args.control, run_as=run_as,
                    on_open=on_open, client_threads=args.client_threads) as supervisor:
        for plan, slot in zip(plans, slots, strict=True):
            print(f"serving {plan.node.path} ({', '.join(plan.node.compatible)}; "
                  f"{plan.export.verdict.name}; backend {backend_name}) on {plan.listen} "
                  f"(worker {slot})", flush=True)
        supervisor.start()
        if run_as is not None:
            print(f"workers run as uid {run_as.uid} gid {run_as.gid} groups "
                  f"{list(run_as.groups)}, no capabilities, no_new_privs (the supervisor "
                  "stays root to start them)", flush=True)
        print(f"trapped accesses: {native.describe()}", flush=True)
        print(f"ready ({len(supervisor.workers)} workers)", flush=True)
        activation.notify("READY=1")
        supervisor.serve_forever()
        print("platpass serve: stopping", flush=True)
    return 0


def _client_threads(text: str) -> int:
    from platpass.assembly.serving import MAX_CLIENT_THREADS

    try:
        count = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= count <= MAX_CLIENT_THREADS:
        raise argparse.ArgumentTypeError(f"{count}: give 0-{MAX_CLIENT_THREADS}")
    return count


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    add_override_option(parser)
    add_together_option(parser)
    parser.add_argument("--client-threads", type=_client_threads, default=0, metavar="N",
                        help="serve up to N clients each on a thread of its own (blocking "
                             "receive, no epoll per request): faster trapped accesses for "
                             "a few busy clients, slower p99 with many and slower "
                             "interrupts on one CPU (default 0: every client on the loop)")
    parser.add_argument("--workers", default="1", metavar="N|auto",
                        help="spread the devices over N worker processes, one reactor "
                             "each (round-robin; auto: one per available CPU); the "
                             "supervisor holds the sockets and restarts a dead worker")
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


__all__ = ["register", "run", "tree_source"]
