"""The sysfs driver-model operations platpass needs, done carefully.

Device and driver names come from users and from firmware, so every name is checked against
what the kernel itself creates (no ``/``, no ``..``) before it becomes part of a path, and
attribute files are opened with ``O_NOFOLLOW``: a name must never lead a root process to
write somewhere else. The ``devices/<name>`` and ``driver`` entries are the kernel's own
symlinks and are followed only through :func:`os.readlink` to learn their target.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from platpass.errors import HostError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:,+@-]*")
BUSES = ("platform", "amba")
DT_BASE = "firmware/devicetree/base"


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a plausible kernel device/driver name, else raise HostError."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise HostError(f"refusing {kind} name {name!r}: not a kernel {kind} name")
    return name


@dataclass(frozen=True, slots=True)
class SysfsDevice:
    """A device on a bus, e.g. ``platform`` / ``9030000.pl061``, under sysfs root ``root``."""

    bus: str
    name: str
    root: Path = Path("/sys")

    def __post_init__(self) -> None:
        if self.bus not in BUSES:
            raise HostError(f"unsupported bus {self.bus!r} (supported: {', '.join(BUSES)})")
        check_name("device", self.name)

    @property
    def path(self) -> Path:
        """``/sys/bus/<bus>/devices/<name>`` (a kernel symlink to the device directory)."""
        return self.root / "bus" / self.bus / "devices" / self.name

    def driver_dir(self, driver: str) -> Path:
        return self.root / "bus" / self.bus / "drivers" / check_name("driver", driver)

    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def driver(self) -> str | None:
        """The bound driver's name, or None."""
        try:
            return os.readlink(self.path / "driver").rsplit("/", 1)[-1]
        except FileNotFoundError:
            return None
        except OSError as err:
            raise HostError(f"{self.name}: cannot read its driver link: {err}") from err

    @property
    def driver_override(self) -> str | None:
        """The ``driver_override`` attribute; None when unset (the kernel prints ``(null)``)."""
        value = read_attr(self.path / "driver_override").strip()
        return None if value in ("", "(null)") else value

    def set_driver_override(self, driver: str | None) -> None:
        """Set (or, with None, clear) ``driver_override``."""
        value = "\n" if driver is None else check_name("driver", driver) + "\n"
        write_attr(self.path / "driver_override", value)

    def unbind(self) -> None:
        """Unbind from the current driver (no-op when unbound)."""
        driver = self.driver
        if driver is not None:
            write_attr(self.driver_dir(driver) / "unbind", self.name)

    def bind(self, driver: str) -> None:
        """Bind to ``driver``; raises HostError with the kernel's errno if the probe fails."""
        directory = self.driver_dir(driver)
        if not directory.is_dir():
            raise HostError(f"driver {driver!r} is not registered on the {self.bus} bus "
                            f"(module not loaded?)")
        write_attr(directory / "bind", self.name)

    def probe(self) -> None:
        """Ask the bus to find a driver (``drivers_probe``), as at hotplug time."""
        write_attr(self.root / "bus" / self.bus / "drivers_probe", self.name)

    @property
    def of_node(self) -> str | None:
        """The DT node path (``/pl061@9030000``) of this device, or None."""
        try:
            target = os.path.realpath(self.path / "of_node")
        except OSError:
            return None
        base = os.path.realpath(self.root / DT_BASE)
        if target == base:
            return "/"
        if not target.startswith(base + "/"):
            return None
        return target[len(base):]


def read_attr(path: Path) -> str:
    """Read a sysfs attribute (never through a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise HostError(f"cannot read {path}: {err.strerror}") from err
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)


def write_attr(path: Path, value: str) -> None:
    """Write a sysfs attribute in one ``write`` (never through a symlink).

    Raises HostError carrying the kernel's errno (e.g. a failed probe's ``ENODEV``).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise SysfsWriteError(err.errno or errno.EIO, path, value) from err
    try:
        os.write(fd, value.encode())
    except OSError as err:
        raise SysfsWriteError(err.errno or errno.EIO, path, value) from err
    finally:
        os.close(fd)


class SysfsWriteError(HostError):
    """Writing a sysfs attribute failed; ``errno`` is what the kernel said."""

    def __init__(self, err: int, path: Path, value: str) -> None:
        super().__init__(f"writing {value.strip()!r} to {path} failed: {os.strerror(err)}")
        self.errno = err
        self.path = path


def device_for_node(node_path: str, root: Path = Path("/sys")) -> SysfsDevice:
    """The platform (or AMBA) device the kernel created for DT node ``node_path``.

    ``node_path`` is a device-tree path (``/pl061@9030000``) or a device name
    (``9030000.pl061``). Raises HostError when no device matches.
    """
    if not node_path.startswith("/"):
        for bus in BUSES:
            candidate = SysfsDevice(bus, check_name("device", node_path), root)
            if candidate.exists():
                return candidate
        raise HostError(f"no platform or AMBA device named {node_path!r}")
    parts = [p for p in node_path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise HostError(f"refusing node path {node_path!r}")
    wanted = "/" + "/".join(parts)
    for bus in BUSES:
        devices = root / "bus" / bus / "devices"
        if not devices.is_dir():
            continue
        for entry in sorted(os.listdir(devices)):
            if not _NAME.fullmatch(entry):
                continue
            device = SysfsDevice(bus, entry, root)
            if device.of_node == wanted:
                return device
    raise HostError(f"no platform or AMBA device for DT node {wanted} "
                    f"(disabled, or not created by the kernel)")
