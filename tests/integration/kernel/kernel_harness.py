"""Boot Debian's real arm64 kernel under qemu-system-aarch64 and run a platpass scenario in it.

The image (kernel, base initramfs with busybox + arm64 python3.11 + the UIO/VFIO modules,
device trees) is built once by ``prepare.sh`` and cached under
``~/.cache/platpass/arm64/<hash of prepare.sh and guest/init>``. Every boot appends a second,
freshly written cpio archive holding the current ``src/platpass`` and ``guest/*.py`` (Linux
unpacks concatenated initramfs archives in order), so editing platpass never rebuilds the
image.

The guest reports on its serial console, one line each:

* ``@@CHECK {json}``: one named check (``name``, ``ok``, ``detail``);
* ``@@HOST <monitor command>``: a request for the host, answered through QEMU's HMP monitor
  (``system_powerdown`` raises the PL061 line 3 through QEMU's gpio-keys);
* ``@@PLATPASS:BEGIN`` / ``@@PLATPASS:END rc=N``: the scenario's start and end.

There are no threads: one ``select`` loop reads the console until the guest powers off or the
wall-clock limit passes.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import importlib.util
import io
import json
import marshal
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
GUEST_DIR = HERE / "guest"
PREPARE = HERE / "prepare.sh"
#: Must match QEMU_OPTS in prepare.sh: the DTBs were dumped for exactly this machine.
QEMU_MACHINE = ["-M", "virt", "-cpu", "cortex-a57", "-smp", "2", "-m", "1G", "-nic", "none",
                "-display", "none"]
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "platpass" / "arm64"


def image_key() -> str:
    """Cache key: what the image is built from (the build script and the init it packs)."""
    digest = hashlib.sha256()
    for path in (PREPARE, GUEST_DIR / "init"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Image:
    """A prepared image directory and how long preparing it took (0 when cached)."""

    path: Path
    prepare_seconds: float

    @property
    def kernel(self) -> Path:
        return self.path / "Image"

    @property
    def base_initramfs(self) -> Path:
        return self.path / "base.cpio.gz"

    def dtb(self, flavour: str) -> Path:
        """``platform`` (pl031/pl061 as platform devices) or ``amba`` (QEMU's own DTB)."""
        return self.path / f"virt-{flavour}.dtb"


def prepare_image(log: Path | None = None) -> Image:
    """Return the cached image, building it first if the build inputs changed.

    Raises RuntimeError with the tail of the build log when ``prepare.sh`` fails.
    """
    final = CACHE_ROOT / image_key()
    if not (final / "done").exists():
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        with open(CACHE_ROOT / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run builds once, the other waits
            if not (final / "done").exists():
                return _build(final, log)
    if log is not None:  # this run's log says so, instead of an earlier run's outcome
        log.write_text(f"cached image {final}; its preparation said:\n"
                       + (final / "done").read_text())
    return Image(final, 0.0)


def _build(final: Path, log: Path | None) -> Image:
    staging = CACHE_ROOT / f"{final.name}.tmp{os.getpid()}"
    started = time.monotonic()
    # The log is written as prepare.sh runs: it is there to read while it runs, and after a
    # timeout.
    log_file = log if log is not None else CACHE_ROOT / f"{final.name}.log"
    with open(log_file, "wb") as out:
        try:
            proc = subprocess.run(["bash", str(PREPARE), str(staging)],
                                  stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=1200)
            returncode: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = "timeout after 1200 s"
    text = log_file.read_text(errors="replace")
    if returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(f"{staging}.work", ignore_errors=True)
        raise RuntimeError(f"prepare.sh failed (rc={returncode}; log {log_file}):\n"
                           f"{text[-4000:]}")
    (staging / "done").write_text(text)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in CACHE_ROOT.iterdir():  # images of earlier build scripts are dead weight
        if old.is_dir() and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return Image(final, time.monotonic() - started)


# ---------------------------------------------------------------------------- cpio (newc)
def _newc_entry(name: str, mode: int, data: bytes, ino: int) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
    header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
    out = header + name.encode() + b"\0"
    out += b"\0" * (-len(out) % 4)
    out += data + b"\0" * (-len(data) % 4)
    return out


def _bytecode(files: dict[str, bytes]) -> dict[str, bytes]:
    """Unchecked-hash ``.pyc`` files for every ``.py``: compiling platpass from source in a
    TCG guest costs seconds per process. Bytecode is portable between machines of the same
    Python minor version (the guest runs Debian's 3.11); other host versions skip this."""
    if sys.version_info[:2] != (3, 11):
        return {}
    out = {}
    for name, data in files.items():
        if not name.endswith(".py"):
            continue
        directory, base = name.rsplit("/", 1)
        code = compile(data, "/" + name, "exec", dont_inherit=True)
        pyc = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
        pyc += importlib.util.source_hash(data) + marshal.dumps(code)
        out[f"{directory}/__pycache__/{base[:-3]}.{sys.implementation.cache_tag}.pyc"] = pyc
    return out


def overlay_cpio(extra: dict[str, bytes] | None = None) -> bytes:
    """A gzip'd newc archive with ``/platpass/src/platpass/**`` and ``/tests/*`` (guest dir).

    ``extra`` maps further guest paths (no leading slash) to file contents.
    """
    files: dict[str, bytes] = {}
    src = REPO / "src" / "platpass"
    for path in sorted(src.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".dts",
                                                                                  ".typed"):
            files[f"platpass/src/platpass/{path.relative_to(src)}"] = path.read_bytes()
    for path in sorted(GUEST_DIR.glob("*.py")):
        files[f"tests/{path.name}"] = path.read_bytes()
    bench = REPO / "bench"
    for path in sorted(bench.glob("*.py")):
        files[f"platpass/bench/{path.name}"] = path.read_bytes()
    files.update(extra or {})
    files.update(_bytecode(files))
    dirs: set[str] = set()
    for name in files:
        parts = name.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    body = io.BytesIO()
    ino = 0x7000
    for d in sorted(dirs):
        ino += 1
        body.write(_newc_entry(d, 0o040755, b"", ino))
    for name, data in sorted(files.items()):
        ino += 1
        body.write(_newc_entry(name, 0o100644, data, ino))
    body.write(_newc_entry("TRAILER!!!", 0, b"", 0))
    return gzip.compress(body.getvalue(), compresslevel=1, mtime=0)


# ---------------------------------------------------------------------------- kmod/
KMOD_DIR = REPO / "kmod"
KMOD_GUEST_DIR = "lib/modules/kmod"


def _run_make(args: list[str]) -> None:
    proc = subprocess.run(["make", "-s", *args, "ARCH=arm64",
                           "CROSS_COMPILE=aarch64-linux-gnu-", f"-j{os.cpu_count() or 1}"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=600)
    text = proc.stdout.decode(errors="replace")
    problems = [line for line in text.splitlines() if line and "Skipping BTF" not in line]
    if proc.returncode != 0 or problems:
        raise RuntimeError(f"building kmod failed or warned (rc={proc.returncode}):\n{text}")


def build_kmod(image: Image) -> dict[str, bytes]:
    """Build the project's ``kmod/`` (and vfio-platform-base, which Debian does not ship)
    against the image's kernel headers with the cross compiler; return the stripped
    modules as guest files under ``/lib/modules/kmod``. A warning fails the build.
    Cached in the image directory by a hash of the sources."""
    digest = hashlib.sha256()
    for path in sorted(KMOD_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out = image.path / "kmod-build" / digest.hexdigest()[:16]
    names = ("vfio-platform-base.ko", "platpass_vfio.ko")
    if not all((out / name).exists() for name in names):
        shutil.rmtree(image.path / "kmod-build", ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="platpass-kmod-"))
        try:
            kbuild = image.path / "kbuild"
            headers = next((kbuild / "usr" / "src").glob("linux-headers-*-arm64"))
            base = work / "vfio-platform"
            shutil.copytree(kbuild / "vfio-platform", base)
            (base / "Kbuild").write_text("obj-m += vfio-platform-base.o\n"
                                         "vfio-platform-base-y := vfio_platform_common.o "
                                         "vfio_platform_irq.o\n")
            _run_make(["-C", str(headers), f"M={base}", "modules"])
            own = work / "kmod"
            shutil.copytree(KMOD_DIR, own)
            _run_make(["-C", str(headers), f"M={own}", f"VFIO_PLATFORM_INC={base}",
                       f"KBUILD_EXTRA_SYMBOLS={base / 'Module.symvers'}", "W=1", "modules"])
            staging = out.with_name(out.name + f".tmp{os.getpid()}")
            staging.mkdir(parents=True)
            for name, built in zip(names, (base / names[0], own / names[1]), strict=True):
                subprocess.run(["aarch64-linux-gnu-strip", "--strip-debug", "-o",
                                str(staging / name), str(built)], check=True)
            staging.rename(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {f"{KMOD_GUEST_DIR}/{name}": (out / name).read_bytes() for name in names}


def kmod_dtb(image: Image, path: Path) -> Path:
    """Write the DTB the kmod scenario boots with to ``path``: QEMU's own (AMBA) DTB with

    * the PL061 a platform device (its interrupt raised through gpio-keys, as elsewhere);
    * the PL031 left an AMBA primecell, bound to rtc-pl031 at boot (the AMBA twin's test);
    * ``uart@9030000``: an ``arm,pl011`` platform node over the PL061's registers. QEMU
      virt's only PL011 is the console, held by a built-in driver that cannot be unbound,
      so the PL011 entry's DMACR filter is checked on this stand-in: UARTDMACR (0x48) is a
      masked GPIODATA alias of the PL061 (bits 1 and 4), which shows what reached it;
    * ``rtc@9010000``: an ``arm,pl031`` platform node with ``dma-coherent`` (refused).
    """
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", str(image.dtb("amba"))],
                         check=True, capture_output=True, text=True).stdout
    pl061 = 'compatible = "arm,pl061\\0arm,primecell";'
    if dts.count(pl061) != 1:
        raise RuntimeError("kmod_dtb: the PL061 node is not as expected")
    dts = dts.replace(pl061, 'compatible = "arm,pl061";')
    extra = """
\tuart@9030000 {
\t\tcompatible = "arm,pl011";
\t\treg = <0x00 0x9030000 0x00 0x1000>;
\t};

\trtc@9010000 {
\t\tcompatible = "arm,pl031";
\t\treg = <0x00 0x9010000 0x00 0x1000>;
\t\tdma-coherent;
\t};
};
"""
    head, sep, _ = dts.rstrip().rpartition("};")
    if not sep:
        raise RuntimeError("kmod_dtb: no root node end")
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(path)],
                   input=head + extra, check=True, text=True)
    return path


# ---------------------------------------------------------------------------- one boot
@dataclass
class GuestRun:
    """What one boot produced: the checks by name, the console log, timings."""

    scenario: str
    checks: dict[str, dict] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    rc: int | None = None
    qemu_rc: int | None = None
    timed_out: bool = False
    seconds_to_begin: float | None = None
    seconds_total: float = 0.0

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log[-lines:])

    def check(self, name: str) -> dict:
        """Return check ``name``'s detail; fail with the evidence if it is missing or failed."""
        record = self.checks.get(name)
        if record is None:
            raise AssertionError(
                f"[{self.scenario}] check {name!r} never reported (rc={self.rc}, "
                f"timed_out={self.timed_out}); console tail:\n{self.tail()}")
        if not record["ok"]:
            raise AssertionError(f"[{self.scenario}] check {name!r} failed: "
                                 f"{json.dumps(record.get('detail'), indent=1)}")
        return record.get("detail") or {}


def _monitor(path: str, command: str) -> None:
    """Send one HMP command (after the prompt) and give QEMU a moment to act on it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        buf = b""
        while b"(qemu)" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        sock.sendall(command.encode() + b"\n")
        time.sleep(0.05)


_CHECK = re.compile(r"@@CHECK (\{.*\})\s*$")
_HOST = re.compile(r"@@HOST (.+?)\s*$")
_END = re.compile(r"@@PLATPASS:END rc=(\d+)")


def boot(image: Image, scenario: str, *, dtb: str | Path = "platform", append: str = "",
         timeout: float = 300.0, log_path: Path | None = None,
         extra: dict[str, bytes] | None = None) -> GuestRun:
    """Boot once, run ``/tests/<scenario>.py`` in the guest, return what it reported.

    ``dtb`` is a flavour of the image (:meth:`Image.dtb`) or a DTB file; ``extra`` adds
    files to the guest (see :func:`overlay_cpio`)."""
    run = GuestRun(scenario)
    tmp = Path(tempfile.mkdtemp(prefix="platpass-arm64-"))
    dtb_path = dtb if isinstance(dtb, Path) else image.dtb(dtb)
    try:
        initrd = tmp / "initrd.gz"
        initrd.write_bytes(image.base_initramfs.read_bytes() + overlay_cpio(extra))
        monitor = str(tmp / "monitor.sock")
        cmdline = f"console=ttyAMA0 rdinit=/init quiet platpass.scenario={scenario} {append}"
        cmd = ["qemu-system-aarch64", *QEMU_MACHINE, "-kernel", str(image.kernel),
               "-initrd", str(initrd), "-dtb", str(dtb_path), "-append", cmdline.strip(),
               "-serial", "stdio", "-monitor", f"unix:{monitor},server=on,wait=off",
               "-no-reboot"]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = b""
        deadline = started + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                run.timed_out = True
                proc.kill()
                break
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                run.log.append(f"[{time.monotonic() - started:7.2f}] {line}")
                _handle(run, line, monitor, started)
        proc.wait(timeout=10)
        run.qemu_rc = proc.returncode
        run.seconds_total = time.monotonic() - started
    finally:
        if log_path is not None:
            log_path.write_text("\n".join(run.log) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
    return run


def _handle(run: GuestRun, line: str, monitor: str, started: float) -> None:
    if "@@PLATPASS:BEGIN" in line:
        run.seconds_to_begin = time.monotonic() - started
    if m := _CHECK.search(line):
        try:
            record = json.loads(m.group(1))
        except json.JSONDecodeError:
            return
        run.checks[record["name"]] = record
    elif m := _HOST.search(line):
        _monitor(monitor, m.group(1))
    elif m := _END.search(line):
        run.rc = int(m.group(1))
