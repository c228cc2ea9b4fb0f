"""``platpass up`` / ``platpass down``: apply a configuration file, and undo it.

``up`` is all-or-nothing. Before anything starts it validates the file
(:mod:`platpass.ops.config`), loads each device tree once, checks every node's verdict,
and probes every socket (a live server there is an error). Then one server process serves
every ``sim`` device on one reactor, with the control socket ``<run_dir>/<name>.ctl`` and a
pid file ``<run_dir>/<name>.pid``; every ``uio``/``vfio`` device is handed to the kernel
engineer's ``platpass assign`` (which binds the host driver, serves, and restores the
driver when stopped), with the device's ``allow_uids``/``allow_gids`` and the service's
``user`` (assign serves from a child that drops to it). If any step fails, what was
started is stopped again, in reverse.

``down`` sends SIGTERM to that process and waits: the process closes its sockets, resets
its devices, and runs ``platpass release`` for each ``uio``/``vfio`` device. If the process
is already gone (killed), ``down`` runs ``platpass release`` itself, which restores a
device whose server died.

Under systemd (``contrib/systemd/platpass@.service``) the process runs in the foreground
(``up --foreground``), reports READY=1, and takes sockets passed by ``platpass@.socket``:
a passed socket bound to a device's configured path (or named after its index,
``FileDescriptorName=device0``) is used instead of binding a new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from platpass.assembly import (
    DevicePlan,
    Export,
    Listen,
    Serving,
    TreeSource,
    choose_exports,
    load_tree,
    log_waivers,
    merge_groups,
)
from platpass.errors import ConfigError, OpsError, PlatpassError
from platpass.firmware.devicetree import DeviceTree
from platpass.host.privilege import RunAs
from platpass.host.safepath import (
    open_append,
    require_trusted_directory,
    write_file_replacing,
)
from platpass.ops import activation
from platpass.ops.config import DeviceConfig, ServiceConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlannedDevice:
    """A configured device with its assessment (checked before anything starts)."""

    config: DeviceConfig
    export: Export


def tree_source(device: DeviceConfig) -> TreeSource:
    """The tree a configured device is judged on (its ``source`` and ``firmware``)."""
    if device.source == "dtb":
        return TreeSource("dtb", device.firmware)
    if device.source == "dts":
        return TreeSource("dts", device.firmware)
    return TreeSource("sim" if device.source == "sim" else "live")


def _socket_in_use(path: Path) -> bool:
    """True when a server listens at ``path`` (a stale socket file is not in use)."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return False
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def plan(config: ServiceConfig, *, inherited: tuple[str, ...] = (),
         probe_sockets: bool = True) -> list[PlannedDevice]:
    """Assess every configured node and (``probe_sockets``) probe every socket;
    ConfigError listing every problem. Nothing is started or changed. ``inherited``:
    socket paths passed by the service manager (those are expected to be in use: by us).
    ``up --check`` does not probe: under socket activation systemd already listens on the
    configured paths when ExecStartPre runs."""
    problems: list[str] = []
    trees: dict[TreeSource, DeviceTree | None] = {}
    planned: list[PlannedDevice] = []
    groups = co_assignment_groups(config)
    for device in config.devices:
        where = f"{config.path}: {device.label}"
        key = tree_source(device)
        if key not in trees:
            try:
                trees[key] = load_tree(key)
            except PlatpassError as err:
                problems.append(f"{where}: cannot load source {device.source}: {err}")
                trees[key] = None
        tree = trees[key]
        if tree is None:
            continue
        exports, refusals = choose_exports(
            tree, [device.node], everything_assignable=False,
            groups=[g for g in groups.get(key, ()) if device.node in g],
            overrides={device.node: device.overrides} if device.overrides else None)
        log_waivers(tree.source, [e.assessment for e in exports],
                    how=f"override in {config.path}")
        if refusals:
            problems.extend(f"{where}.node: {refusal}" for refusal in refusals)
            continue
        if probe_sockets and str(device.socket) not in inherited and \
                _socket_in_use(device.socket):
            problems.append(f"{where}.socket: {device.socket} is in use by a running server")
            continue
        planned.append(PlannedDevice(device, exports[0]))
    if probe_sockets and _socket_in_use(config.control_path):
        problems.append(f"{config.path}: service {config.name!r} is already up (control "
                        f"socket {config.control_path} answers)")
    if problems:
        raise ConfigError("\n".join(problems))
    return planned


def co_assignment_groups(config: ServiceConfig) -> dict[TreeSource, list[list[str]]]:
    """The configured co-assignment groups (``together``) per tree, merged where they
    share a node: a node goes to one guest, so every group it is in is one group."""
    edges: dict[TreeSource, list[tuple[str, ...]]] = {}
    for device in config.devices:
        if device.together:
            edges.setdefault(tree_source(device), []).append((device.node, *device.together))
    return {key: merge_groups(found) for key, found in edges.items()}


def _group_of(config: ServiceConfig, device: DeviceConfig) -> list[str]:
    for group in co_assignment_groups(config).get(tree_source(device), ()):
        if device.node in group:
            return group
    return []


# -- the kernel backends, through platpass assign / release ------------------------------

def assign_command(device: DeviceConfig, user: RunAs | None = None,
                   config: ServiceConfig | None = None) -> list[str]:
    """The ``platpass assign`` command that serves a uio/vfio device in the background:
    with the device's SO_PEERCRED allow-list, its overrides and (given the whole
    ``config``) its co-assignment group, and, given the service's ``user`` (a ``RunAs``),
    from a child that drops to it (assign's root process keeps the restore)."""
    argv = [sys.executable, "-m", "platpass", "assign", device.node, "--backend",
            device.backend, "--socket", str(device.socket), "--mode", f"{device.mode:o}"]
    if device.overrides:
        argv += ["--override", f"{device.node}={','.join(sorted(device.overrides))}"]
    others = [n for n in (_group_of(config, device) if config else ()) if n != device.node]
    if others:
        argv += ["--together", ",".join(others)]
    if device.owner is not None:
        argv += ["--owner", str(device.owner)]
    if device.group is not None:
        argv += ["--group", str(device.group)]
    if device.source == "dtb" and device.firmware is not None:
        argv += ["--dtb", str(device.firmware)]
    for uid in sorted(device.allow_uids):
        argv += ["--allow-uid", str(uid)]
    for gid in sorted(device.allow_gids):
        argv += ["--allow-gid", str(gid)]
    if user is not None:
        argv += ["--user", user.spec]
    return argv


def release_command(device: DeviceConfig) -> list[str]:
    """The ``platpass release`` command that stops it and restores the host driver."""
    return [sys.executable, "-m", "platpass", "release", device.node]


def _run_tool(argv: list[str], what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise OpsError(f"{what}: {err}") from err
    if result.returncode != 0:
        raise OpsError(f"{what} failed ({result.returncode}): "
                       f"{(result.stderr or result.stdout).strip()}")


# -- the foreground server -------------------------------------------------------------

def run_foreground(config: ServiceConfig, *, log_stream: TextIO | None = None) -> int:
    """Serve everything ``config`` describes until SIGTERM/SIGINT (``up --foreground``)."""
    from platpass.ops.control import ControlServer
    from platpass.ops.logs import configure_logging
    from platpass.ops.trace import TraceWriter
    from platpass.vfio_user.server import DeviceEndpoint, SocketOptions

    configure_logging(config.log_format, config.log_level, log_stream)
    inherited = activation.listen_fds()
    planned = plan(config, inherited=tuple(s.path for s in inherited if s.path))
    assigned: list[DeviceConfig] = []
    configs: dict[str, DeviceConfig] = {}
    pid_written = False
    serving = Serving()
    worker_plans: list[DevicePlan] = []
    supervisor = None
    try:
        if config.trace:
            serving.recorder = TraceWriter(config.trace, serving.reactor.time,
                                           reactor=serving.reactor)
        for item in planned:
            device_config = item.config
            if device_config.kernel:
                _run_tool(assign_command(device_config, config.user, config),
                          f"{device_config.label}: platpass assign {device_config.node}")
                assigned.append(device_config)
                log.info("%s served by platpass assign on %s", device_config.node,
                         device_config.socket, extra={"device": device_config.node,
                                                      "socket": str(device_config.socket)})
                continue
            options = SocketOptions(mode=device_config.mode, owner=device_config.owner,
                                    group=device_config.group,
                                    allow_uids=device_config.allow_uids,
                                    allow_gids=device_config.allow_gids,
                                    server_uid=None if config.user is None
                                    else config.user.uid)
            passed = activation.match_inherited(inherited, path=str(device_config.socket),
                                                name=f"device{device_config.index}")
            if passed is not None:
                inherited.remove(passed)
            listen = Listen(fd=passed.fd) if passed is not None else \
                Listen(device_config.socket)
            device_plan = DevicePlan(item.export, device_config.backend, listen, options,
                                     dma_deny=device_config.dma == "deny",
                                     pci=device_config.pci)
            if config.workers > 1:  # opened by the workers (platpass.ops.workers)
                worker_plans.append(device_plan)
            else:
                serving.add(device_plan)
            if device_config.pci is not None and config.workers == 1:
                log.info("%s: PCI personality %s", item.export.node.path,
                         serving.pci_accounts[item.export.node.path],
                         extra={"device": item.export.node.path})
            configs[item.export.node.path] = device_config
            log.info("serving %s on %s", item.export.node.path, device_config.socket,
                     extra={"device": item.export.node.path,
                            "socket": str(device_config.socket)})
        for unused in inherited:
            log.warning("socket fd %d (%s) passed by the service manager matches no device",
                        unused.fd, unused.path or unused.name)

        def describe(endpoint: DeviceEndpoint) -> dict[str, Any]:
            return describe_node(endpoint.name)

        def describe_node(name: str) -> dict[str, Any]:
            cfg = configs.get(name)
            if cfg is None:
                return {}
            return {"backend": cfg.backend, "source": cfg.source,
                    "configured_socket": str(cfg.socket), "guest_address": cfg.guest_address,
                    "guest_spis": list(cfg.guest_spis), "dma": cfg.dma}

        def others() -> list[dict[str, Any]]:
            return [{"name": cfg.node, "backend": cfg.backend, "socket": str(cfg.socket),
                     "served_by": "platpass assign", "guest_address": cfg.guest_address,
                     "guest_spis": list(cfg.guest_spis)} for cfg in assigned]

        _prepare_run_dir(config.run_dir)
        if worker_plans:
            from platpass.ops.workers import Supervisor

            supervisor = Supervisor(worker_plans, config.workers,
                                    control=config.control_path, name=config.name,
                                    describe=describe_node, others=others,
                                    run_as=config.user)
        else:
            serving.control = ControlServer(serving.reactor, serving.server,
                                            config.control_path, name=config.name,
                                            describe=describe, others=others)
        _write_pid_file(config.pid_path)
        pid_written = True
        serving.reactor.stop_on_signals()
        activation.notify("READY=1")
        print(f"ready: {config.name} ({len(planned)} devices; control "
              f"{config.control_path})", flush=True)
        if supervisor is not None:
            supervisor.start()
            supervisor.serve_forever()
        elif config.user is None:
            serving.serve_forever()
        else:
            user = config.user

            def announce() -> None:
                log.info("serving as %s (pid %d)", user.spec, os.getpid(),
                         extra={"pid": os.getpid(), "uid": os.getuid()})

            code = serving.serve_separated(user, announce)
            if code != 0:
                log.error("the unprivileged server exited with %d", code,
                          extra={"error": code})
        activation.notify("STOPPING=1")
        log.info("stopping %s", config.name)
    finally:
        if supervisor is not None:
            supervisor.close()
        serving.close()
        for device_config in reversed(assigned):
            try:
                _run_tool(release_command(device_config),
                          f"platpass release {device_config.node}")
            except OpsError as err:
                log.error("%s", err, extra={"device": device_config.node})
        if pid_written:
            config.pid_path.unlink(missing_ok=True)
    return 0


def _write_pid_file(path: Path) -> None:
    write_file_replacing(path, f"{os.getpid()}\n".encode())


def _prepare_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` if needed and refuse one another user could write (root puts
    its pid file, log and control socket there)."""
    try:
        run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as err:
        raise OpsError(f"cannot create run_dir {run_dir}: {err.strerror}") from err
    require_trusted_directory(run_dir)


# -- background up / down ----------------------------------------------------------------

def running_pid(config: ServiceConfig) -> int | None:
    """The pid of the configuration's server when it is alive, else None."""
    try:
        pid = int(config.pid_path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"up" not in cmdline or not any(str(config.path).encode() in a for a in cmdline):
        return None  # the pid was reused by something else
    return pid


def up_background(config: ServiceConfig, config_arg: str, timeout: float = 30.0) -> int:
    """Start ``up --foreground`` as a detached process; return its pid once its control
    socket answers. OpsError (with the end of its log) if it exits or never answers."""
    from platpass.ops.control import query

    plan(config)  # every error here, before a process is started
    _prepare_run_dir(config.run_dir)
    log_path = config.run_dir / f"{config.name}.log"
    log_fd = open_append(log_path)
    try:
        # The server reports why it failed only through this log: if it cannot be
        # written (a full run_dir), say so now instead of "exited with 1" and no reason.
        os.write(log_fd, f"platpass up: starting {config.name}\n".encode())
    except OSError as err:
        os.close(log_fd)
        raise OpsError(f"cannot write the server log {log_path}: {err.strerror}") from err
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "platpass", "up", "--foreground", str(config.path)],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
            start_new_session=True)
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OpsError(f"{config.name}: server exited with {proc.returncode}: "
                           f"{_tail(log_path)}")
        with contextlib.suppress(OpsError):
            query(config.control_path, timeout=1.0)
            return proc.pid
        time.sleep(0.05)
    proc.terminate()
    raise OpsError(f"{config.name}: server did not answer within {timeout:.0f} s: "
                   f"{_tail(log_path)}")


def _tail(path: Path, lines: int = 5) -> str:
    try:  # only the end: the log of a long-lived server may be large
        with open(path, "rb") as handle:
            handle.seek(max(os.fstat(handle.fileno()).st_size - 64 * 1024, 0))
            text = handle.read(64 * 1024).decode(errors="replace")
    except OSError:
        return "(no log)"
    lines_seen = [line for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(lines_seen) or f"(nothing in {path})"


def down(config: ServiceConfig, timeout: float = 10.0) -> list[str]:
    """Stop the configuration's server and make sure kernel devices are restored; returns
    problems (empty when everything was stopped and restored)."""
    problems: list[str] = []
    pid = running_pid(config)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except PermissionError:
            return [f"not permitted to stop server pid {pid} (it runs as another user; "
                    "run platpass down as root or as that user)"]
        except ProcessLookupError:
            pid = None  # it exited meanwhile: clean up after it below
    if pid is not None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            _reap(pid)
            time.sleep(0.02)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            problems.append(f"server pid {pid} ignored SIGTERM for {timeout:.0f} s; killed")
            _reap(pid)
    # Whatever a dead server left: its pid file, sockets nobody listens on (a live server
    # of another configuration on the same path is left alone), kernel devices.
    try:
        config.pid_path.unlink(missing_ok=True)
    except OSError as err:
        problems.append(f"cannot remove {config.pid_path}: {err.strerror}")
    for path in [config.control_path, *(d.socket for d in config.devices if not d.kernel)]:
        try:
            if stat.S_ISSOCK(path.lstat().st_mode) and not _socket_in_use(path):
                path.unlink()
                log.info("removed stale socket %s", path, extra={"socket": str(path)})
        except FileNotFoundError:
            pass
        except OSError as err:
            problems.append(f"cannot remove stale socket {path}: {err}")
    for device in config.devices:
        if device.kernel:
            try:
                _run_tool(release_command(device), f"platpass release {device.node}")
            except OpsError as err:
                if "was not assigned" not in str(err):
                    problems.append(str(err))
    return problems


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


__all__ = ["PlannedDevice", "assign_command", "co_assignment_groups", "down", "plan",
           "release_command",
           "run_foreground", "running_pid", "up_background"]
