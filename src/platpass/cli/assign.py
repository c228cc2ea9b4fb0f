"""``platpass assign`` / ``platpass release``: hand a real device to a vfio-user server.

    platpass assign /pl061@9030000 --socket /run/pl061.sock
    platpass release /pl061@9030000

Without ``--backend`` (``auto``) the module is used when it is loaded, else UIO; no-IOMMU
VFIO taints the kernel and is used only when named. With ``kmod`` and ``vfio`` the client's
interrupt eventfds go straight to the kernel (:mod:`platpass.host.vfio_kernel.passthrough`).

``assign`` judges the device on the live device tree (refused verdicts are refused with
their evidence unless ``--force-unsafe``), records its current driver in
``/run/platpass/assignments.json``, binds it to ``platpass-vfio-platform``/``-amba`` (the
project's kernel module, ``--backend kmod``), ``uio_pdrv_genirq`` (``--backend uio``) or
``vfio-platform``/``vfio-amba`` (``--backend vfio``), and serves it over vfio-user until
SIGTERM/SIGINT; then it resets the device through its platpass driver and puts it back on
its original driver. Without ``--foreground`` it returns once the socket listens, leaving
the server in the background. Any failing step rolls back what was done.

``release`` stops the server and waits for its cleanup; if the server died without cleaning
up (``kill -9``), ``release`` resets and restores the device itself. Both commands first
restore any device whose server is gone.

The socket options are ``serve``'s (:mod:`platpass.cli.options`): ``--allow-uid`` and
``--allow-gid`` (SO_PEERCRED allow-list), ``--control PATH`` (``platpass status``) and
``--trace FILE``. ``--user USER[:GROUP]`` separates privileges
(:func:`platpass.host.privilege.run_separated`): everything that needs root (the bind,
opening ``/dev/uioN`` or the VFIO fds and mapping the registers, creating the sockets) is
done first; then a child drops to USER and serves with the fds it inherited, while the
recorded server process stays root, forwards SIGTERM/SIGINT, and once the child is gone
(stopped, crashed or killed) resets the device, removes the sockets and puts the device
back on its original driver, which an unprivileged process could not do.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from platpass.assembly import (
    DevicePlan,
    Export,
    Listen,
    Serving,
    TreeSource,
    backend_opener,
    load_tree,
)
from platpass.assembly.plan import assess, log_waivers
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
from platpass.firmware.verdict import Assessment
from platpass.host import binding
from platpass.host.binding import Assignment, StateFile
from platpass.host.live_use import live_host_use
from platpass.host.privilege import RunAs
from platpass.host.safepath import open_append
from platpass.host.sysfs import SysfsDevice, device_for_node
from platpass.vfio_user.server import SocketOptions

log = logging.getLogger(__name__)

def _assess(node_path: str, dtb: str | None,
            overrides: Iterable[tuple[str, frozenset[str]]] = (),
            together: Iterable[Iterable[str]] = ()) -> Assessment:
    """The assessment of ``node_path`` on the live tree (or ``dtb``), with the user's
    ``--override`` waivers and ``--together`` co-assignment (the other nodes that go to
    the same guest); on the live tree the running kernel's view of who uses the device
    counts too."""
    tree = load_tree(TreeSource("dtb", Path(dtb)) if dtb else TreeSource("live"))
    live = None if dtb else live_host_use([node_path])
    try:
        groups = groups_for(tree, [(node_path, *names) for names in together])
    except NodeError as err:
        raise HostError(f"--together: {err}") from err
    assessment = assess(tree, overrides=overrides_for(tree, overrides),
                        live=live, groups=groups).get(node_path)
    if assessment is None:
        raise HostError(f"{node_path}: not a device node of the device tree")
    log_waivers(tree.source, [assessment])
    return assessment


def _reset_entry(entry: Assignment) -> None:
    """Reset a device a dead server left behind, through its platpass driver (best effort:
    the device must still be bound to the host driver of ``entry``)."""
    from platpass.reactor import EpollReactor

    device = SysfsDevice(entry.bus, entry.device)
    if device.driver != entry.host_driver:
        return
    assessment = assess(load_tree(TreeSource("live"))).get(entry.node)
    if assessment is None or assessment.driver is None:
        return
    export = Export.forced(assessment)
    reactor = EpollReactor()
    try:
        backend = backend_opener(entry.backend)(export.node, reactor)
        try:
            export.driver.reset(backend)
        finally:
            backend.close()
    finally:
        reactor.close()


def _report_recovered(state: StateFile) -> None:
    for entry, problems in binding.recover_stale(state, reset=_reset_entry):
        if problems:
            print(f"platpass: could not restore {entry.device} (server pid {entry.pid} is "
                  f"gone): {'; '.join(problems)}", file=sys.stderr)
        else:
            print(f"platpass: restored {entry.device} to "
                  f"{entry.original_driver or 'no driver'} (its server, pid {entry.pid}, "
                  "was gone)", file=sys.stderr)


def assign(args: argparse.Namespace) -> int:
    """Bind, serve, and on exit reset + restore; see the module docstring."""
    # Names resolved before anything is touched: a typo changes nothing.
    run_as = run_as_from_args(args)
    try:
        options = socket_options(args, None if run_as is None else run_as.uid)
    except KeyError as err:
        print(f"platpass assign: unknown user or group {err}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"platpass assign: --mode {args.mode!r} is not octal", file=sys.stderr)
        return 2
    access = Access(run_as, options)
    state = StateFile(Path(args.state_dir))
    _report_recovered(state)
    device = device_for_node(args.node)
    node_path = device.of_node
    if node_path is None:
        raise HostError(f"{device.name} has no device-tree node")
    if args.backend == "auto":
        args.backend = binding.auto_backend(device.bus)
    assessment = _assess(node_path, args.dtb, args.override, args.together)
    warnings: list[str] = []
    if not assessment.may_assign:
        reasons = assessment.explanation
        if not args.force_unsafe:
            print(f"platpass assign: refused {node_path}: {reasons}", file=sys.stderr)
            return 1
        warning = (f"FORCED assignment of {node_path} despite {reasons}; the device may "
                   "reach memory the guest does not own")
        print("platpass assign: WARNING: " + warning, file=sys.stderr)
        warnings.append(warning)
    # A refused device (forced) gets the generic driver if none claims it, and never has
    # a page mapped; the assessment decides that, as for every other entry point.
    export = Export.of(assessment) if assessment.may_assign and assessment.driver \
        else Export.forced(assessment)
    host_driver = binding.host_driver_for(args.backend, device.bus)
    with state.locked() as entries:
        if device.name in entries:
            entry = entries[device.name]
            raise HostError(f"{device.name} is already assigned (server pid {entry.pid}, "
                            f"socket {entry.socket}); release it first")
        original, override = binding.bind_device(device, host_driver)
        entries[device.name] = Assignment(
            node=node_path, bus=device.bus, device=device.name, original_driver=original,
            original_override=override, host_driver=host_driver, backend=args.backend,
            socket=str(Path(args.socket).absolute()), pid=os.getpid(),
            pid_start=binding.process_start_time(os.getpid()),
            verdict=assessment.verdict.name, force_unsafe=bool(args.force_unsafe),
            warnings=tuple(warnings), since=time.time())
    print(f"bound {device.name} ({node_path}) to {host_driver}; was on "
          f"{original or 'no driver'}", flush=True)
    try:
        plan = DevicePlan(export, args.backend, Listen(Path(args.socket)), access.socket)
        return _serve(args, access, state, device, plan)
    except BaseException:
        _restore(state, device.name)
        raise


def _restore(state: StateFile, name: str) -> list[str]:
    """Put the device back and forget its entry (kept when restoring failed)."""
    with state.locked() as entries:
        entry = entries.get(name)
        if entry is None:
            return []
        problems = binding.restore_device(SysfsDevice(entry.bus, entry.device),
                                          entry.original_driver, entry.original_override)
        if not problems:
            del entries[name]
        return problems


@dataclass(frozen=True, slots=True)
class Access:
    """Who may connect (socket file permissions, SO_PEERCRED allow-list) and whom the
    server runs as."""

    run_as: RunAs | None
    socket: SocketOptions


def _serve(args: argparse.Namespace, access: Access, state: StateFile, device: SysfsDevice,
           plan: DevicePlan) -> int:
    from platpass.ops.control import ControlServer
    from platpass.ops.trace import TraceWriter

    node = plan.node
    serving = Serving()
    code = 0
    try:
        if args.trace:
            serving.recorder = TraceWriter(args.trace, serving.reactor.time,
                                           reactor=serving.reactor)
        serving.add(plan)
        if args.control:
            serving.control = ControlServer(serving.reactor, serving.server, args.control,
                                            name="platpass assign")
        if not args.foreground:
            _daemonize(state, device.name, Path(args.state_dir) / f"{device.name}.log")
        serving.reactor.stop_on_signals()
        if access.run_as is None:
            print(f"serving {node.path} on {args.socket} (backend {args.backend}, pid "
                  f"{os.getpid()})", flush=True)
            serving.serve_forever()
        else:
            def announce() -> None:
                print(f"serving {node.path} on {args.socket} (backend {args.backend}, pid "
                      f"{os.getpid()}, as uid {os.getuid()} gid {os.getgid()}; root monitor "
                      f"pid {os.getppid()})", flush=True)

            code = serving.serve_separated(access.run_as, announce)
            if code != 0:
                print(f"platpass assign: the unprivileged server exited with {code}; "
                      "resetting and restoring the device", file=sys.stderr, flush=True)
    finally:
        serving.close()  # the driver resets the device, then the backend lets go of it
        problems = _restore(state, device.name)
        for problem in problems:
            print(f"platpass assign: restoring {device.name}: {problem}", file=sys.stderr)
    return code


def _daemonize(state: StateFile, name: str, log_path: Path) -> None:
    """Fork; the parent records the child as the server and exits 0 without cleanup. The
    child's output goes to ``log_path`` (next to the state file)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        with state.locked() as entries:
            if name in entries:
                entries[name] = binding.with_pid(entries[name], pid)
        print(f"server pid {pid}", flush=True)
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = open_append(log_path)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)


def release(args: argparse.Namespace) -> int:
    """Stop the device's server; restore the device if the server could not."""
    state = StateFile(Path(args.state_dir))
    device = device_for_node(args.node)
    entry = state.read().get(device.name)
    if entry is not None and binding.server_alive(entry):
        clean = binding.stop_server(entry, timeout=args.timeout)
        if not clean:
            print(f"platpass release: server pid {entry.pid} ignored SIGTERM; killed",
                  file=sys.stderr)
    _report_recovered(state)  # a server that died uncleanly leaves its entry behind
    left = state.read().get(device.name)
    if left is not None:
        print(f"platpass release: {device.name} could not be restored; still recorded in "
              f"{state.path}", file=sys.stderr)
        return 1
    if entry is None:
        print(f"platpass release: {device.name} was not assigned (driver: "
              f"{device.driver or 'none'})", file=sys.stderr)
        return 1
    print(f"released {device.name}: on {device.driver or 'no driver'}", flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``assign`` and ``release`` to the command line."""
    parser = subparsers.add_parser(
        "assign", help="bind a real device to UIO/VFIO and serve it over vfio-user",
        description="Check the device's verdict on the live device tree, move it to "
                    "uio_pdrv_genirq or vfio-platform/vfio-amba, serve it over vfio-user "
                    "until SIGTERM, then reset it and restore its original driver.")
    parser.add_argument("node", metavar="NODE",
                        help="device-tree path (/pl061@9030000) or device name")
    parser.add_argument("--backend", choices=("auto", "kmod", "uio", "vfio"), default="auto",
                        help="kmod (platpass's kernel module: no IOMMU, no taint, interrupts "
                             "straight to the client), uio (no taint, interrupts relayed), "
                             "vfio (vfio-platform/vfio-amba: an IOMMU, or no-IOMMU mode, "
                             "which taints); auto (default): kmod when the module is "
                             "loaded, else uio")
    parser.add_argument("--socket", required=True, metavar="PATH",
                        help="vfio-user socket to listen on")
    parser.add_argument("--force-unsafe", action="store_true",
                        help="assign even a refused device (loud warning, recorded)")
    add_override_option(parser)
    add_together_option(parser, first="NODE")
    parser.add_argument("--foreground", action="store_true",
                        help="serve in this process instead of the background")
    parser.add_argument("--dtb", metavar="FILE",
                        help="judge on this DTB instead of /sys/firmware/fdt")
    add_socket_file_arguments(parser)
    add_access_arguments(parser)
    add_privilege_arguments(parser)
    add_ops_arguments(parser)
    parser.add_argument("--state-dir", default=str(binding.DEFAULT_STATE_DIR),
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=assign)
    parser = subparsers.add_parser(
        "release", help="stop serving an assigned device and restore its driver",
        description="Stop the device's server (SIGTERM), then make sure the device is "
                    "back on its original driver, restoring it here if the server died.")
    parser.add_argument("node", metavar="NODE", help="device-tree path or device name")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the server before SIGKILL")
    parser.add_argument("--state-dir", default=str(binding.DEFAULT_STATE_DIR),
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=release)
