"""Moving a device between host drivers without ever losing track of where it came from.

``bind_device`` records the device's driver and ``driver_override`` before touching
anything and puts both back if any step fails, so a failed bind leaves the device where it
was. Every assignment is written to a small state file under ``/run/platpass`` (atomic
replace, under an ``flock``) with the serving process's pid and start time: when that
process dies without cleaning up (``kill -9``, a crash), the next ``assign`` or ``release``
sees the dead pid and restores the device (:func:`recover_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from platpass.errors import BindError, HostError
from platpass.host.sysfs import SysfsDevice

DEFAULT_STATE_DIR = Path("/run/platpass")
STATE_NAME = "assignments.json"

#: (backend, bus) -> the host driver that hands the device to userspace. ``kmod`` is the
#: project's own kernel module (kmod/: VFIO with an emulated IOMMU, no taint), ``vfio``
#: the kernel's vfio-platform/vfio-amba (an IOMMU, or no-IOMMU mode).
HOST_DRIVERS: dict[tuple[str, str], str] = {
    ("kmod", "platform"): "platpass-vfio-platform",
    ("kmod", "amba"): "platpass-vfio-amba",
    ("uio", "platform"): "uio_pdrv_genirq",
    ("vfio", "platform"): "vfio-platform",
    ("vfio", "amba"): "vfio-amba",
}
#: host driver -> the module that provides it (tried with modprobe when not registered).
DRIVER_MODULES = {"uio_pdrv_genirq": "uio_pdrv_genirq", "vfio-platform": "vfio-platform",
                  "vfio-amba": "vfio-amba", "platpass-vfio-platform": "platpass_vfio",
                  "platpass-vfio-amba": "platpass_vfio"}
#: The backends ``assign`` tries, in order, when none is named: the module when it is
#: loaded, then UIO. No-IOMMU VFIO taints the kernel: only when asked for by name.
AUTO_BACKENDS = ("kmod", "uio")


def host_driver_for(backend: str, bus: str) -> str:
    """The host driver for ``backend`` on ``bus``; HostError when there is none."""
    try:
        return HOST_DRIVERS[(backend, bus)]
    except KeyError:
        raise HostError(f"backend {backend!r} cannot take a device on the {bus} bus "
                        f"(UIO's uio_pdrv_genirq is a platform driver; use --backend kmod "
                        f"or vfio for AMBA devices)") from None


def auto_backend(bus: str, sysfs: Path = Path("/sys")) -> str:
    """The backend ``assign`` uses for a device on ``bus`` when none is named: ``kmod``
    when the platpass_vfio module is loaded (its driver is registered on the bus), else
    ``uio`` (which the caller refuses for an AMBA device, naming the alternatives)."""
    for backend in AUTO_BACKENDS:
        driver = HOST_DRIVERS.get((backend, bus))
        if driver is None:
            continue
        if backend != "kmod" or (sysfs / "bus" / bus / "drivers" / driver).is_dir():
            return backend
    return "uio"


@dataclass(frozen=True, slots=True)
class Assignment:
    """One device handed to a platpass server, with everything needed to undo it."""

    node: str
    bus: str
    device: str
    original_driver: str | None
    original_override: str | None
    host_driver: str
    backend: str
    socket: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    verdict: str = ""
    force_unsafe: bool = False
    warnings: tuple[str, ...] = field(default=())
    since: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Assignment:
        data = dict(data)
        data["warnings"] = tuple(data.get("warnings", ()))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat),
    or None when it is gone or a zombie; pid plus start time names a process despite pid
    reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def server_alive(entry: Assignment) -> bool:
    """True while the process recorded for ``entry`` still runs."""
    if entry.pid is None:
        return False
    start = process_start_time(entry.pid)
    return start is not None and (entry.pid_start is None or start == entry.pid_start)


class StateFile:
    """``/run/platpass/assignments.json``: device name -> :class:`Assignment`."""

    def __init__(self, directory: Path = DEFAULT_STATE_DIR) -> None:
        self.directory = directory
        self.path = directory / STATE_NAME

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, Assignment]]:
        """Hold the lock, yield the entries; whatever the block leaves in the dict is
        written back atomically when it exits normally."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise HostError(f"{self.directory} is not a directory owned by uid "
                            f"{os.geteuid()}; refusing to keep device state there")
        if stat.S_IMODE(info.st_mode) & 0o022:
            raise HostError(f"{self.directory} is writable by other users (mode "
                            f"{stat.S_IMODE(info.st_mode):04o}); refusing to keep device "
                            "state there")
        fd = os.open(self.directory / ".lock",
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self.read()
            yield entries
            self._write(entries)
        finally:
            os.close(fd)

    def read(self) -> dict[str, Assignment]:
        """The entries (empty when there is no file). A corrupt file is an error, not an
        empty state: it may be the only record of where a device came from."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            return {name: Assignment.from_json(e) for name, e in data["devices"].items()}
        except (ValueError, KeyError, TypeError) as err:
            raise HostError(f"{self.path} is corrupt ({err}); fix or remove it by hand "
                            "after checking the devices it lists") from err

    def _write(self, entries: dict[str, Assignment]) -> None:
        # mkstemp: an unpredictable name created with O_EXCL, so nothing planted in the
        # directory can redirect the write; rename() then replaces the entry itself.
        data = {"devices": {name: asdict(e) for name, e in sorted(entries.items())}}
        fd, tmp = tempfile.mkstemp(prefix=f".{STATE_NAME}.", dir=self.directory)
        try:
            try:
                os.write(fd, json.dumps(data, indent=1).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def _ensure_driver(device: SysfsDevice, driver: str) -> None:
    """Load the driver's module if the bus does not know the driver yet (best effort)."""
    if device.driver_dir(driver).is_dir() or device.root != Path("/sys"):
        return  # registered already, or not the live sysfs (nothing to load into)
    module = DRIVER_MODULES.get(driver)
    modprobe = shutil.which("modprobe")
    if module and modprobe:
        subprocess.run([modprobe, module], check=False, capture_output=True, timeout=30)


def bind_device(device: SysfsDevice, driver: str) -> tuple[str | None, str | None]:
    """Move ``device`` to ``driver``; returns (original driver, original override).

    Raises BindError, after putting the device back on its original driver, when any step
    fails (driver missing, probe refused).
    """
    original, override = device.driver, device.driver_override
    if original == driver:
        return original, override
    try:
        _ensure_driver(device, driver)
        device.set_driver_override(driver)
        device.unbind()
        device.bind(driver)
        if device.driver != driver:
            raise HostError(f"{device.name} is on {device.driver!r} after binding")
    except HostError as err:
        problems = restore_device(device, original, override)
        where = original or "no driver"
        extra = f"; restoring also failed: {'; '.join(problems)}" if problems else ""
        raise BindError(f"binding {device.name} to {driver} failed: {err}; left on "
                        f"{where}{extra}") from err
    return original, override


def restore_device(device: SysfsDevice, driver: str | None,
                   override: str | None) -> list[str]:
    """Put ``device`` back on ``driver`` (None: unbound) with ``override``; returns the
    problems met (empty on success) instead of raising, so cleanup paths finish."""
    problems = []
    try:
        if device.driver != driver:
            device.unbind()
        device.set_driver_override(override)
        if driver is not None and device.driver != driver:
            device.bind(driver)
    except HostError as err:
        problems.append(str(err))
    if device.driver != driver:
        problems.append(f"{device.name} is on {device.driver!r}, wanted {driver!r}")
    return problems


def recover_stale(state: StateFile, sysfs: Path = Path("/sys"),
                  reset: object = None) -> list[tuple[Assignment, list[str]]]:
    """Restore every device whose server died without cleaning up; returns what was
    recovered with the problems met. ``reset(entry)``, if given, runs first (best effort:
    the device driver's reset sequence)."""
    recovered = []
    with state.locked() as entries:
        for name, entry in list(entries.items()):
            if server_alive(entry):
                continue
            if callable(reset):
                with contextlib.suppress(Exception):
                    reset(entry)
            device = SysfsDevice(entry.bus, entry.device, sysfs)
            problems = restore_device(device, entry.original_driver, entry.original_override)
            recovered.append((entry, problems))
            if not problems:
                del entries[name]
                remove_stale_socket(entry.socket)
    return recovered


def remove_stale_socket(path: str | None) -> None:
    """Unlink the listening socket a killed server left behind (only if it is a socket),
    so the next ``assign`` can listen on the same path."""
    if not path:
        return
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def stop_server(entry: Assignment, timeout: float = 10.0) -> bool:
    """SIGTERM the entry's server and wait for it to exit, SIGKILL it after ``timeout``.

    True if it exited on SIGTERM. Raises HostError if it outlives SIGKILL by ``timeout``:
    a process stuck in the kernel, typically unbinding vfio-platform while a client still
    holds a dup of the device fd (the kernel waits for every fd to close).
    """
    if not server_alive(entry) or entry.pid is None:
        return True
    os.kill(entry.pid, 15)
    if _wait_gone(entry, timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(entry.pid, 9)
    if not _wait_gone(entry, timeout):
        raise HostError(f"server pid {entry.pid} of {entry.device} does not exit even after "
                        "SIGKILL: stuck in the kernel (a VFIO client still holding the "
                        "device fd blocks the unbind until it closes it)")
    return False


def _wait_gone(entry: Assignment, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while server_alive(entry):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def with_pid(entry: Assignment, pid: int) -> Assignment:
    """``entry`` recorded as served by process ``pid``."""
    return replace(entry, pid=pid, pid_start=process_start_time(pid))
