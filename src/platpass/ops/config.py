"""The ``platpass up/down`` configuration file: which devices to serve, how and where.

A TOML file (stdlib :mod:`tomllib`) with an optional ``[service]`` table and one
``[[device]]`` table per device::

    [service]
    name = "lab"                 # default: the file name without .toml
    run_dir = "/run/platpass"    # control socket <name>.ctl and pid file <name>.pid
    log_format = "text"          # text | json
    log_level = "info"           # debug | info | warning | error
    trace = "/var/log/platpass/lab.trace"   # optional: trace every device
    user = "platpass:kvm"        # optional: serve as this user (privilege separation)
    workers = 2                  # optional: worker processes (1-64 or "auto"; default 1;
                                 # see platpass serve --workers)

    [[device]]
    node = "/soc@9000000/gpio@30000"
    source = "sim"               # sim | dtb | dts | live
    firmware = "/boot/board.dtb" # the file, for source = dtb | dts only
    backend = "sim"              # sim (default for source sim) | kmod | uio | vfio
    socket = "/run/platpass/gpio0.sock"
    owner = "root"  group = "kvm"  mode = "0660"
    allow_uids = [1000]  allow_gids = ["kvm"]
    dma = "deny"                 # allow | deny
    guest_address = 0x9030000    # page-aligned
    guest_spis = [7]             # one GIC SPI per interrupt
    pci = "auto"                 # optional: a PCI function for vfio-user-pci clients
                                 # (auto | "VVVV:DDDD"; see platpass serve --pci)
    override = ["host-consumer"] # optional: host-use rules waived for this device
                                 # (logged; see platpass scan --override)
    together = ["/soc@9000000/i2c@40000"]  # optional: co-assignment group: other
                                 # [[device]] nodes (same source) that go to the same guest

Validation is complete and pure (:func:`parse_config` touches nothing but the names it
resolves: users, groups, the paths it checks for existence); every problem is reported
with the file, the table and the key, and the first one is raised as
:class:`~platpass.errors.ConfigError`. Whether each node exists and is assignable is
checked against its device tree by ``platpass up`` before anything starts.
"""

from __future__ import annotations

import grp
import os
import pwd
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platpass.errors import ConfigError
from platpass.firmware.verdict import WAIVABLE_RULES
from platpass.host.privilege import PrivilegeError, checked_id
from platpass.inputs import (
    MAX_CONFIG_BYTES,
    MAX_DTB_BYTES,
    MAX_SOURCE_BYTES,
    check_regular,
    read_input,
)
from platpass.ops.logs import FORMATS, LEVELS

SOURCES = ("sim", "dtb", "dts", "live")
#: kmod: platpass_vfio (kmod/), through ``platpass assign --backend kmod``.
BACKENDS = ("sim", "kmod", "uio", "vfio")
_KERNEL = ("kmod", "uio", "vfio")
DMA_POLICIES = ("allow", "deny")
DEFAULT_RUN_DIR = "/run/platpass"
PAGE_SIZE = 4096
#: Highest GIC SPI number (INTID 1019 - 32), as the guest layer allows.
MAX_SPI = 987

SERVICE_KEYS = ("name", "run_dir", "log_format", "log_level", "trace", "user", "workers")
DEVICE_KEYS = ("node", "source", "firmware", "backend", "socket", "owner", "group", "mode",
               "allow_uids", "allow_gids", "dma", "guest_address", "guest_spis", "pci",
               "override", "together")


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """One ``[[device]]`` table, validated; ``owner``/``group``/``allow_*`` are numeric."""

    index: int
    node: str
    source: str
    firmware: Path | None
    backend: str
    socket: Path
    mode: int = 0o600
    owner: int | None = None
    group: int | None = None
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()
    dma: str = "allow"
    guest_address: int | None = None
    guest_spis: tuple[int, ...] = ()
    #: PCI personality: None (platform device), "auto" or "VVVV:DDDD".
    pci: str | None = None
    #: Host-use rules the user waives for this node (``--override NODE=RULE``).
    overrides: frozenset[str] = frozenset()
    #: Other configured nodes (same tree) that go to the same guest: judged as one group.
    together: tuple[str, ...] = ()

    @property
    def tree_key(self) -> tuple[str, str]:
        """Which tree the node is judged on (its source and firmware file)."""
        return self.source, str(self.firmware)

    @property
    def label(self) -> str:
        """``device[i]`` — how errors and logs name this table."""
        return f"device[{self.index}]"

    @property
    def kernel(self) -> bool:
        """True when a host driver is swapped (uio/vfio): served by ``platpass assign``."""
        return self.backend != "sim"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A whole configuration file."""

    path: Path
    name: str
    run_dir: Path
    log_format: str
    log_level: str
    trace: Path | None
    devices: tuple[DeviceConfig, ...] = field(default=())
    #: ``platpass.host.privilege.RunAs`` to serve as (None: stay root).
    user: Any = None
    #: Worker processes for the devices ``up`` serves itself (``serve --workers``).
    workers: int = 1

    @property
    def control_path(self) -> Path:
        """The status control socket of this configuration's server."""
        return self.run_dir / f"{self.name}.ctl"

    @property
    def pid_path(self) -> Path:
        """Where ``up`` records the server's pid for ``down``."""
        return self.run_dir / f"{self.name}.pid"


class _Checker:
    """Collects the problems of one file, each prefixed with where it is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{self.path}: {where}: {message}")

    def keys(self, where: str, table: dict[str, Any], known: tuple[str, ...]) -> None:
        for key in table:
            if key not in known:
                self.fail(where, f"unknown key {key!r} (known: {', '.join(known)})")

    def string(self, where: str, table: dict[str, Any], key: str, *, default: str | None,
               choices: tuple[str, ...] | None = None) -> str | None:
        value = table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(f"{where}.{key}", f"must be a string, got {type(value).__name__}")
            return None
        if choices is not None and value not in choices:
            self.fail(f"{where}.{key}", f"{value!r} is not one of {', '.join(choices)}")
            return None
        return value

    def absolute(self, where: str, value: str | None, *, must_exist: bool,
                 parent_must_exist: bool = False) -> Path | None:
        if value is None:
            return None
        if "\0" in value:
            self.fail(where, f"{value!r} contains a NUL character")
            return None
        path = Path(value)
        if not path.is_absolute():
            self.fail(where, f"must be an absolute path, got {value!r}")
            return None
        if must_exist and not path.exists():
            self.fail(where, f"{value} does not exist")
            return None
        if parent_must_exist and not path.parent.is_dir():
            self.fail(where, f"directory {path.parent} does not exist")
            return None
        return path


def _uid(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return checked_id(value, "uid")
    if isinstance(value, str):
        return pwd.getpwnam(value).pw_uid
    raise KeyError(value)


def _gid(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return checked_id(value, "gid")
    if isinstance(value, str):
        return grp.getgrnam(value).gr_gid
    raise KeyError(value)


def parse_config(text: str, path: str | Path) -> ServiceConfig:
    """Validate configuration ``text`` read from ``path``; ConfigError with every problem
    (one per line, the first in the message's first line) when anything is wrong."""
    path = Path(path)
    check = _Checker(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    except RecursionError as err:  # tomllib recurses per nesting level
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from err
    check.keys("top level", data, ("service", "device"))
    service = data.get("service", {})
    if not isinstance(service, dict):
        check.fail("service", "must be a table ([service])")
        service = {}
    check.keys("service", service, SERVICE_KEYS)
    name = check.string("service", service, "name", default=path.stem)
    if name is not None and (not name or "/" in name or name.startswith(".")):
        check.fail("service.name", f"{name!r} is not a plain file name")
    run_dir = check.absolute("service.run_dir", check.string(
        "service", service, "run_dir", default=DEFAULT_RUN_DIR), must_exist=False)
    log_format = check.string("service", service, "log_format", default="text",
                              choices=FORMATS)
    log_level = check.string("service", service, "log_level", default="info", choices=LEVELS)
    trace = check.absolute("service.trace", check.string("service", service, "trace",
                                                         default=None),
                           must_exist=False, parent_must_exist=True)
    user_text = check.string("service", service, "user", default=None)
    user = None
    if user_text is not None:
        from platpass.host.privilege import PrivilegeError, parse_run_as

        try:
            user = parse_run_as(user_text)
        except PrivilegeError as err:
            check.fail("service.user", str(err))
    workers = _workers(check, service.get("workers", 1))
    if workers > 1 and trace is not None:
        check.fail("service.workers", "workers > 1 does not combine with trace (a trace is "
                   "one process's timeline, which replay follows in order)")
    tables = data.get("device", [])
    if not isinstance(tables, list):
        check.fail("device", "must be an array of tables ([[device]])")
        tables = []
    if not tables:
        check.fail("device", "no [[device]] table: nothing to serve")
    devices = [d for i, table in enumerate(tables)
               if (d := _device(check, i, table)) is not None]
    sockets: dict[Path, str] = {}
    nodes: dict[tuple[str, str, str], str] = {}
    for device in devices:
        socket = Path(os.path.normpath(device.socket))
        if socket in sockets:
            check.fail(device.label, f"socket {device.socket} is already used by "
                       f"{sockets[socket]}")
        sockets.setdefault(socket, device.label)
        key = (device.source, str(device.firmware), device.node)
        if key in nodes:
            check.fail(device.label, f"node {device.node} is already served by {nodes[key]}")
        nodes.setdefault(key, device.label)
    served = {(device.tree_key, device.node) for device in devices}
    for device in devices:
        for other in device.together:
            if (device.tree_key, other) not in served:
                check.fail(f"{device.label}.together", f"{other} is not the node of a "
                           f"[[device]] with the same source and firmware: a co-assigned "
                           f"node goes to the guest too, so it must be served")
    if run_dir is not None and name is not None:
        control = run_dir / f"{name}.ctl"
        if control in sockets:
            check.fail(sockets[control], f"socket {control} is the control socket")
    if not check.problems:
        assert name is not None and run_dir is not None
        _check_places(check, run_dir, name, devices, trace, user)
    if check.problems:
        raise ConfigError("\n".join(check.problems))
    assert name is not None and run_dir is not None
    assert log_format is not None and log_level is not None
    return ServiceConfig(path, name, run_dir, log_format, log_level, trace, tuple(devices),
                         user, workers)


def _workers(check: _Checker, value: object) -> int:
    """``workers``: an integer 1-64 or "auto" (validated like ``serve --workers``)."""
    from platpass.ops.workers import parse_workers

    if isinstance(value, bool) or not isinstance(value, int | str):
        check.fail("service.workers", f"{value!r} is not a number of workers (1-64 or "
                   "\"auto\")")
        return 1
    try:
        return parse_workers(str(value))
    except ValueError as err:
        check.fail("service.workers", str(err))
        return 1


#: Longest path a client can connect to (``sun_path`` holds 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


def _check_places(check: _Checker, run_dir: Path, name: str,
                  devices: list[DeviceConfig], trace: Path | None, user: Any) -> None:
    """What ``up`` would refuse about the places it creates files in, found without
    creating anything (so ``up --check`` refuses everything ``up`` would)."""
    from platpass.errors import HostError
    from platpass.host.safepath import require_trusted_directory

    def trusted(where: str, directory: Path, owners: tuple[int, ...] = ()) -> None:
        try:
            require_trusted_directory(directory, owners)
        except HostError as err:
            check.fail(where, str(err))

    # run_dir: up creates it (with its parents) and refuses one others may write.
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        check.fail("service.run_dir", f"{existing} exists and is not a directory")
    else:
        if existing == run_dir:
            trusted("service.run_dir", run_dir)
        space = os.statvfs(existing)
        if (space.f_bfree if os.geteuid() == 0 else space.f_bavail) == 0 or \
                space.f_favail == 0:
            check.fail("service.run_dir", f"no space left on the filesystem of {existing} "
                       "(up writes its pid file, log and control socket there)")
    control = run_dir / f"{name}.ctl"
    if len(os.fsencode(control)) > MAX_SOCKET_PATH:
        check.fail("service.run_dir", f"control socket {control} is longer than "
                   f"{MAX_SOCKET_PATH} bytes (the limit of a unix socket path)")
    if (control.is_symlink() or control.exists()) and not control.is_socket():
        check.fail("service.run_dir", f"{control} exists and is not a socket")
    if (run_dir / f"{name}.pid").is_dir():
        check.fail("service.run_dir", f"{run_dir / f'{name}.pid'} is a directory")
    if trace is not None and (trace.is_symlink()
                              or (trace.exists() and not trace.is_file())):
        check.fail("service.trace", f"{trace} exists and is not a regular file")
    server_uid = None if user is None else user.uid
    for device in devices:
        where = f"{device.label}.socket"
        if len(os.fsencode(device.socket)) > MAX_SOCKET_PATH:
            check.fail(where, f"{device.socket} is longer than {MAX_SOCKET_PATH} bytes "
                       "(the limit of a unix socket path)")
        if device.socket.parent.is_dir():
            trusted(where, device.socket.parent,
                    tuple(u for u in (device.owner, server_uid) if u is not None))


def _device(check: _Checker, index: int, table: object) -> DeviceConfig | None:
    where = f"device[{index}]"
    if not isinstance(table, dict):
        check.fail(where, "must be a table")
        return None
    before = len(check.problems)
    check.keys(where, table, DEVICE_KEYS)
    node = check.string(where, table, "node", default=None)
    if node is None and "node" not in table:
        check.fail(where, "missing key 'node' (the device-tree path)")
    elif node is not None and not node.startswith("/"):
        check.fail(f"{where}.node", f"must be a device-tree path starting with '/', "
                   f"got {node!r}")
    source = check.string(where, table, "source", default=None, choices=SOURCES)
    if "source" not in table:
        check.fail(where, f"missing key 'source' ({', '.join(SOURCES)})")
    firmware_text = check.string(where, table, "firmware", default=None)
    firmware = None
    if source in ("dtb", "dts"):
        if firmware_text is None:
            check.fail(where, f"source {source!r} needs key 'firmware' (the file)")
        firmware = check.absolute(f"{where}.firmware", firmware_text, must_exist=True)
        if firmware is not None:
            # What up would refuse (a device such as /dev/zero, a FIFO, a huge file),
            # up --check refuses too, without opening it.
            try:
                check_regular(firmware, limit=MAX_DTB_BYTES if source == "dtb"
                              else MAX_SOURCE_BYTES, what="firmware", error=ConfigError)
            except ConfigError as err:
                check.fail(f"{where}.firmware", str(err).removeprefix("firmware "))
                firmware = None
    elif firmware_text is not None:
        check.fail(f"{where}.firmware", f"only for source dtb or dts, not {source!r}")
    backend = check.string(where, table, "backend",
                           default="sim" if source == "sim" else "uio", choices=BACKENDS)
    if backend == "sim" and source == "live":
        check.fail(f"{where}.backend", "the sim backend models a described board; source "
                   "'live' is this host's hardware")
    if source == "sim" and backend in _KERNEL:
        check.fail(f"{where}.backend", f"{backend!r} drives real hardware; the simulated "
                   "board needs backend 'sim'")
    if backend in _KERNEL and source == "dts":
        check.fail(f"{where}.backend", f"{backend!r} judges the device on the live tree or "
                   "a dtb (platpass assign); source 'dts' is not supported")
    if "socket" not in table:
        check.fail(where, "missing key 'socket' (absolute path of the vfio-user socket)")
    socket = check.absolute(f"{where}.socket", check.string(where, table, "socket",
                                                            default=None),
                            must_exist=False, parent_must_exist=True)
    if socket is not None and socket.exists() and not socket.is_socket():
        check.fail(f"{where}.socket", f"{socket} exists and is not a socket")
    mode = _mode(check, where, table.get("mode", "0600"))
    owner = _identity(check, f"{where}.owner", table, "owner", _uid, "user")
    group = _identity(check, f"{where}.group", table, "group", _gid, "group")
    allow_uids = _identities(check, f"{where}.allow_uids", table.get("allow_uids", []), _uid,
                             "user")
    allow_gids = _identities(check, f"{where}.allow_gids", table.get("allow_gids", []), _gid,
                             "group")
    dma = check.string(where, table, "dma", default="allow", choices=DMA_POLICIES)
    guest_address = table.get("guest_address")
    if guest_address is not None and (
            not isinstance(guest_address, int) or isinstance(guest_address, bool)
            or guest_address < 0 or guest_address % PAGE_SIZE):
        check.fail(f"{where}.guest_address", f"must be a page-aligned ({PAGE_SIZE:#x}) "
                   f"address, got {guest_address!r}")
    spis = table.get("guest_spis", [])
    if not isinstance(spis, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_SPI
            for s in spis):
        check.fail(f"{where}.guest_spis", f"must be a list of SPI numbers 0..{MAX_SPI}, "
                   f"got {spis!r}")
        spis = []
    elif len(set(spis)) != len(spis):
        check.fail(f"{where}.guest_spis", f"SPIs repeat: {spis!r}")
    pci = check.string(where, table, "pci", default=None)
    if pci is not None:
        from platpass.vfio_device.pci.ids import parse_pci_id

        try:
            parse_pci_id(pci)
        except ValueError as err:
            check.fail(f"{where}.pci", str(err))
        if backend in _KERNEL:
            check.fail(f"{where}.pci", f"backend {backend!r} devices are served by platpass "
                       "assign, which has no PCI personality yet (use platpass serve --pci)")
    overrides = _strings(check, f"{where}.override", table.get("override", []))
    bad = sorted(set(overrides) - WAIVABLE_RULES)
    if bad:
        check.fail(f"{where}.override", f"{', '.join(bad)} cannot be waived; only "
                   f"{', '.join(sorted(WAIVABLE_RULES))} can (bus-master and shared "
                   "refusals never)")
    together = _strings(check, f"{where}.together", table.get("together", []))
    for other in together:
        if not other.startswith("/"):
            check.fail(f"{where}.together", f"must list device-tree paths starting with "
                       f"'/', got {other!r}")
        elif other == node:
            check.fail(f"{where}.together", f"{other} is this device's own node")
    if len(check.problems) != before:
        return None
    assert node is not None and source is not None and backend is not None
    assert socket is not None and dma is not None and mode is not None
    return DeviceConfig(index, node, source, firmware, backend, socket, mode, owner, group,
                        allow_uids, allow_gids, dma, guest_address, tuple(spis), pci,
                        frozenset(overrides), tuple(dict.fromkeys(together)))


def _strings(check: _Checker, where: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        check.fail(where, f"must be a list of strings, got {value!r}")
        return []
    return list(value)


def _mode(check: _Checker, where: str, value: object) -> int | None:
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            mode = -1
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        mode = -1
    if not 0 <= mode <= 0o777:
        check.fail(f"{where}.mode", f"must be an octal permission string like \"0660\", "
                   f"got {value!r}")
        return None
    return mode


def _identity(check: _Checker, where: str, table: dict[str, Any], key: str,
              resolve: Any, kind: str) -> int | None:
    if key not in table:
        return None
    try:
        return int(resolve(table[key]))
    except (KeyError, ValueError):
        check.fail(where, f"no such {kind} {table[key]!r}")
        return None
    except PrivilegeError as err:
        check.fail(where, str(err))
        return None


def _identities(check: _Checker, where: str, values: object, resolve: Any,
                kind: str) -> frozenset[int]:
    if not isinstance(values, list):
        check.fail(where, f"must be a list of {kind} names or ids, got {values!r}")
        return frozenset()
    result = set()
    for value in values:
        try:
            result.add(int(resolve(value)))
        except PrivilegeError as err:
            check.fail(where, str(err))
        except (KeyError, ValueError):
            check.fail(where, f"no such {kind} {value!r}")
    return frozenset(result)


def load_config(path: str | Path) -> ServiceConfig:
    """Read and validate a configuration file (ConfigError when unreadable or invalid)."""
    path = Path(path)
    data = read_input(path, limit=MAX_CONFIG_BYTES, what="configuration", error=ConfigError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err
    return parse_config(text, path.absolute())


__all__ = ["BACKENDS", "DEVICE_KEYS", "SERVICE_KEYS", "SOURCES", "DeviceConfig",
           "ServiceConfig", "load_config", "parse_config"]
