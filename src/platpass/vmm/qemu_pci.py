"""Run an unmodified Linux guest in QEMU on a platpass device presented as PCI.

QEMU (10.1 and later) ships ``vfio-user-pci``, a vfio-user client for PCI functions; a
stock Linux guest then binds its own PCI driver (``8250_pci`` for a 16550) to a platpass
device served with a PCI personality (:mod:`platpass.vfio_device.pci`). This module holds
what the integration tests, the bench and ``platpass demo`` share:

* finding a QEMU new enough (on ``PATH``, or inside a Debian root such as the one the
  tests build from trixie-backports, run through that root's own dynamic loader so no
  chroot is needed and socket paths stay the host's);
* a busybox initramfs (with any kernel modules the guest loads) whose ``/init``
  drives the port and reports on the console with
  ``@@`` marker lines (:func:`guest_init`);
* :class:`PciUartRun`: one boot, its console read from the same :class:`EpollReactor`
  that runs the platpass server, so the device's host side (transmitted bytes, injected
  input, interrupt counters) is observed without threads.

No test logic here: the callers decide what to check.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from platpass.assembly import DevicePlan, Listen, Serving, find_export
from platpass.errors import VmmError
from platpass.firmware.devicetree import DeviceTree
from platpass.reactor import EpollReactor
from platpass.vfio_device.pci.device import PciVfioDevice
from platpass.vfio_user.server import VfioUserServer

#: First QEMU release with ``-device vfio-user-pci``.
MIN_QEMU = (10, 1)
#: Kernel command line the guests use: 4 legacy ports take ttyS0-3, so allow more.
APPEND = "console=ttyS0 8250.nr_uarts=8 quiet panic=-1"


def version_of(argv: list[str]) -> tuple[int, ...] | None:
    """QEMU's version from ``--version`` (None when it does not run)."""
    try:
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True,
                             timeout=30, check=False).stdout
    except OSError:
        return None
    found = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else None


@dataclass(frozen=True, slots=True)
class Qemu:
    """A runnable ``qemu-system-<arch>``: the argv that starts it and its data dirs."""

    argv: tuple[str, ...]
    data_dirs: tuple[str, ...]
    version: tuple[int, ...]

    @property
    def has_vfio_user_pci(self) -> bool:
        """True for QEMU >= 10.1."""
        return self.version[:2] >= MIN_QEMU

    def command(self, *, kernel: Path, initrd: Path, devices: list[str],
                machine: tuple[str, ...] = ("-M", "q35", "-accel", "tcg", "-m", "512"),
                append: str = APPEND, extra: tuple[str, ...] = ()) -> list[str]:
        """A headless boot of ``kernel`` + ``initrd`` with the console on stdio;
        ``extra`` goes last (e.g. ``-trace vfio_intx_interrupt -D FILE``)."""
        argv = list(self.argv)
        for directory in self.data_dirs:
            argv += ["-L", directory]
        argv += [*machine, "-nic", "none", "-vga", "none", "-display", "none",
                 "-serial", "stdio", "-monitor", "none", "-no-reboot",
                 "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
        for device in devices:
            argv += ["-device", device]
        return argv + list(extra)


def intx_trace(log: Path) -> tuple[str, ...]:
    """QEMU options that log each INTx trigger QEMU receives and each EOI (unmask) it
    sends to ``log``: the client's side of the interrupt count."""
    return ("-trace", "vfio_intx_interrupt", "-trace", "vfio_pci_intx_eoi", "-D", str(log))


def count_trace(log: Path, event: str) -> int:
    """How many ``event`` lines a QEMU ``-D`` log holds."""
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if re.search(rf"\b{re.escape(event)}\b", line))


def vfio_user_pci(socket_path: Path | str, addr: str | None = None) -> str:
    """The ``-device`` JSON for QEMU's vfio-user client on ``socket_path``, in PCI slot
    ``addr`` (QEMU's ``SLOT[.FN]``) when given."""
    import json

    device: dict[str, object] = {"driver": "vfio-user-pci",
                                 "socket": {"path": str(socket_path), "type": "unix"}}
    if addr is not None:
        device["addr"] = addr
    return json.dumps(device)


def qemu_in_root(root: Path, arch: str = "x86_64") -> Qemu | None:
    """QEMU installed in a Debian root (``debootstrap`` + apt), run through the root's own
    loader and libraries; None when absent or not runnable."""
    binary = root / "usr" / "bin" / f"qemu-system-{arch}"
    libs = root / "usr" / "lib" / "x86_64-linux-gnu"
    loader = libs / "ld-linux-x86-64.so.2"
    if not binary.is_file() or not loader.exists():
        return None
    argv = [str(loader), "--library-path", str(libs), str(binary)]
    version = version_of(argv)
    if version is None:
        return None
    dirs = tuple(str(d) for d in (root / "usr/share/qemu", root / "usr/share/seabios",
                                  root / "usr/share/qemu-efi-aarch64") if d.is_dir())
    return Qemu(tuple(argv), dirs, version)


def find_qemu(arch: str = "x86_64", roots: tuple[Path, ...] = ()) -> Qemu | None:
    """The first QEMU >= 10.1 found: ``$PLATPASS_QEMU_ROOT``, then ``PATH``, then
    ``roots``; None when there is none (an older QEMU does not count)."""
    candidates: list[Qemu | None] = []
    env_root = os.environ.get("PLATPASS_QEMU_ROOT")
    if env_root:
        candidates.append(qemu_in_root(Path(env_root), arch))
    on_path = shutil.which(f"qemu-system-{arch}")
    if on_path:
        version = version_of([on_path])
        candidates.append(Qemu((on_path,), (), version) if version else None)
    candidates += [qemu_in_root(root, arch) for root in roots]
    for qemu in candidates:
        if qemu is not None and qemu.has_vfio_user_pci:
            return qemu
    return None


@dataclass(frozen=True, slots=True)
class GuestImage:
    """QEMU plus a guest kernel and a static busybox: what a boot needs."""

    qemu: Qemu
    kernel: Path
    busybox: Path


def cache_dir() -> Path:
    """Where the tests' ``prepare.sh`` keeps its builds (one directory per script hash)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "platpass" / "qemu-pci"


def find_guest_image(arch: str = "x86_64") -> GuestImage | None:
    """A complete image: a build of ``tests/integration/qemu_pci/prepare.sh`` in the cache
    (QEMU from its trixie root), or ``$PLATPASS_QEMU_ROOT`` + ``$PLATPASS_GUEST_KERNEL`` +
    ``$PLATPASS_GUEST_BUSYBOX``; None when nothing complete is found."""
    kernel = os.environ.get("PLATPASS_GUEST_KERNEL")
    busybox = os.environ.get("PLATPASS_GUEST_BUSYBOX")
    if kernel and busybox:
        qemu = find_qemu(arch)
        if qemu is not None:
            return GuestImage(qemu, Path(kernel), Path(busybox))
    root = cache_dir()
    builds = sorted(root.glob("*/done"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if root.is_dir() else []
    for done in builds:
        build = done.parent
        qemu = qemu_in_root(build / "root", arch)
        if qemu is not None and qemu.has_vfio_user_pci:
            return GuestImage(qemu, build / "vmlinuz", build / "busybox")
    return None


# ---------------------------------------------------------------------------- initramfs

def _newc(name: str, mode: int, data: bytes, ino: int) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    out = b"070701" + b"".join(f"{v:08X}".encode() for v in fields) + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    return out + data + b"\0" * (-len(data) % 4)


def busybox_initramfs(busybox: bytes, init: str, files: dict[str, bytes] | None = None
                      ) -> bytes:
    """A gzipped newc archive: ``/bin/busybox`` (static), ``/init`` and ``files`` (path
    relative to the root -> content, e.g. kernel modules under ``lib/modules/``; their
    directories are created)."""
    entries = [("bin", 0o40755, b""), ("dev", 0o40755, b""), ("proc", 0o40755, b""),
               ("sys", 0o40755, b""), ("tmp", 0o41777, b""),
               ("bin/busybox", 0o100755, busybox), ("init", 0o100755, init.encode())]
    made = {name for name, _, _ in entries}
    for path, data in sorted((files or {}).items()):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                made.add(directory)
                entries.append((directory, 0o40755, b""))
        entries.append(("/".join(parts), 0o100644, data))
    body = b"".join(_newc(n, m, d, i + 1) for i, (n, m, d) in enumerate(entries))
    return gzip.compress(body + _newc("TRAILER!!!", 0, b"", 0), 1)


def tx_payload(lines: int) -> bytes:
    """The text the guest writes (it generates the same lines with its shell)."""
    return b"".join(b"platpass pci line %d: the quick brown fox jumps over the lazy dog\n"
                    % i for i in range(lines))


#: What the host injects for the guest to read (printable, no spaces: the guest echoes it).
RX_TEXT = b"platpass-rx:0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def guest_init(vendor: int, device: int, *, tx_lines: int = 40, rx_bytes: int = len(RX_TEXT),
               flood_bytes: int = 0, baud: int = 115200) -> str:
    """The guest's ``/init``: find the PCI function, report its driver and tty, write
    ``tx_lines`` lines, read ``rx_bytes`` injected bytes, report the interrupt count.

    With ``flood_bytes``, it instead writes that many bytes as fast as the tty takes them
    and reports the time (``@@FLOOD bytes ns``, from ``/proc/uptime``: 10 ms steps;
    busybox's date has no ``%N``) — the bench, and the mid-transfer kill.

    Markers: ``@@PCI slot driver=NAME``, ``@@DMESG line``, ``@@TTY name``, ``@@TX-SENT n``,
    ``@@RX-READY``, ``@@RX text``, ``@@IRQS count``, ``@@FLOOD n ns``, ``@@END``.
    """
    payload = (f"i=0; while [ $i -lt {tx_lines} ]; do echo \"platpass pci line $i: the "
               "quick brown fox jumps over the lazy dog\"; i=$((i+1)); done > /tmp/tx")
    return f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
D=""; T=""
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat $d/vendor)" = "0x{vendor:04x}" ] && [ "$(cat $d/device)" = "0x{device:04x}" ]; then
    D=$d; echo "@@PCI $(basename $d) driver=$(basename "$(readlink $d/driver)" 2>/dev/null)"
    T=$(ls $d/tty 2>/dev/null | head -1)
  fi
done
dmesg | grep -E "$(basename "$D")|ttyS" | sed 's/^/@@DMESG /'
echo "@@TTY $T"
if [ -n "$T" ]; then
  exec 3<>/dev/$T
  stty -F /dev/$T {baud} raw -echo -ixon -ixoff -crtscts clocal
  if [ {flood_bytes} -gt 0 ]; then
    head -c {flood_bytes} /dev/zero | tr '\\0' U > /tmp/flood
    t0=$(cut -d' ' -f1 /proc/uptime); cat /tmp/flood >&3; t1=$(cut -d' ' -f1 /proc/uptime)
    echo "@@FLOOD {flood_bytes} $(( (${{t1%.*}}${{t1#*.}} - ${{t0%.*}}${{t0#*.}}) * 10000000 ))"
  else
    {payload}
    cat /tmp/tx >&3
    echo "@@TX-SENT $(wc -c < /tmp/tx)"
    echo "@@RX-READY"
    timeout 30 head -c {rx_bytes} <&3 > /tmp/rx
    echo "@@RX $(cat /tmp/rx)"
  fi
  sleep 1
  N=$(cat $D/irq)
  echo "@@IRQS $(grep "^ *$N:" /proc/interrupts | awk '{{print $2}}')"
  exec 3>&-
fi
echo "@@END"
poweroff -f
"""


# ---------------------------------------------------------------------------- one boot

@dataclass
class PciUartRun:
    """One QEMU boot whose console is read on ``reactor``.

    ``on_marker(name, rest)`` is called for every ``@@NAME rest`` line. The run ends when
    QEMU exits (console EOF); :meth:`wait` drives the reactor until then or a timeout.
    """

    reactor: EpollReactor
    argv: list[str]
    log_path: Path
    on_marker: Callable[[str, str], None] | None = None
    markers: dict[str, list[str]] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    finished: float | None = None
    _partial: bytes = b""

    def start(self) -> None:
        """Start QEMU (its own process group, so a kill reaches nothing else)."""
        self.started = self.reactor.time()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed at EOF
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.reactor.add_reader(fd, self._readable)

    def _readable(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not data:
            self.reactor.remove_reader(fd)
            self.finished = self.reactor.time()
            self._log.close()
            self.proc.wait()
            return
        self._log.write(data)
        self._log.flush()
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            line = raw.decode(errors="replace").rstrip("\r")
            self.lines.append(line)
            found = re.search(r"@@([A-Z-]+)(?: (.*))?$", line)
            if found:
                name, rest = found.group(1), found.group(2) or ""
                self.markers.setdefault(name, []).append(rest)
                if self.on_marker is not None:
                    self.on_marker(name, rest)

    @property
    def done(self) -> bool:
        """QEMU has exited and its output is read."""
        return self.finished is not None

    def wait(self, timeout: float) -> bool:
        """Run the reactor until QEMU exits; on timeout, kill it and return False."""
        if self.reactor.run_until(lambda: self.done, timeout):
            return True
        self.kill()
        self.reactor.run_until(lambda: self.done, 10)
        return False

    def kill(self) -> None:
        """SIGKILL QEMU (mid-transfer, or at a timeout)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def first(self, name: str) -> str | None:
        """The first ``@@name`` marker's text."""
        values = self.markers.get(name)
        return values[0] if values else None

    def tail(self, lines: int = 40) -> str:
        """The console's last lines, for failure messages."""
        return "\n".join(self.lines[-lines:])


class RxFeeder:
    """Feeds bytes into a UART model no faster than its receive FIFO has room for (a real
    line would overrun a FIFO that the guest drains late)."""

    def __init__(self, reactor: EpollReactor, model: Any, data: bytes,
                 period: float = 0.002) -> None:
        self.reactor, self.model, self.data, self.period = reactor, model, data, period
        self.sent = 0

    def start(self) -> None:
        """Begin feeding (from the reactor)."""
        self.reactor.call_later(0, self._tick)

    def _tick(self) -> None:
        model = self.model
        room = model.capacity - len(model.rx_fifo)
        if room > 0 and self.sent < len(self.data):
            chunk = self.data[self.sent:self.sent + room]
            model.inject_rx(chunk)
            self.sent += len(chunk)
        if self.sent < len(self.data):
            self.reactor.call_later(self.period, self._tick)


@dataclass
class ServedPciFunction:
    """A simulated device served as a PCI function on one socket, host side in reach."""

    serving: Serving
    device: PciVfioDevice
    why: str

    @property
    def server(self) -> VfioUserServer:
        return self.serving.server

    @property
    def model(self) -> Any:
        """The device's model (a UART's ``tx_output`` and ``inject_rx``, an SPI
        controller's ``targets``)."""
        return self.device.backend.model

    def close(self) -> None:
        """Stop serving and give the device up."""
        self.serving.close()


def serve_pci_function(reactor: EpollReactor, tree: DeviceTree, node_path: str,
                   socket_path: Path, requested: str = "auto") -> ServedPciFunction:
    """Serve ``node_path`` of ``tree`` (simulated backend) as a PCI function on
    ``socket_path`` from ``reactor``, built like ``platpass serve --pci`` builds it. Raises
    VmmError for a device platpass refuses (with the assessment's evidence), and
    PciIdError/PciPersonalityError for one that cannot be this PCI function."""
    found = find_export(tree, node_path)
    if isinstance(found, str):
        raise VmmError(f"not served: {found}")
    serving = Serving(reactor)
    try:
        device = serving.add(DevicePlan(found, "sim", Listen(socket_path), pci=requested))
    except BaseException:
        serving.close()
        raise
    return ServedPciFunction(serving, cast(PciVfioDevice, device), serving.pci_accounts[node_path])
