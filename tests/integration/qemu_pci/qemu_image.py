"""The QEMU vfio-user-pci tests' image: QEMU >= 10.1 and stock Debian kernels (amd64, arm64).

(A module of its own, not conftest.py: a test module importing ``conftest`` gets whichever
conftest pytest loaded last when several directories are collected in one run.)

``prepare.sh`` builds them once per machine (a minbase Debian trixie root with QEMU from
trixie-backports, the bookworm kernel and busybox-static) under
``~/.cache/platpass/qemu-pci/<hash of prepare.sh>``; later runs reuse it. conftest.py turns
it into the ``qemu_image`` fixture.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from platpass.vmm.qemu_pci import Qemu, qemu_in_root

HERE = Path(__file__).resolve().parent
PREPARE = HERE / "prepare.sh"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "platpass" \
    / "qemu-pci"
LOG_DIR = Path(os.environ.get("PLATPASS_QEMU_LOGS", "/tmp/platpass-qemu-logs"))


@dataclass(frozen=True)
class QemuImage:
    """The prepared QEMU root, guest kernel and busybox."""

    path: Path
    qemu: Qemu
    prepare_seconds: float

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def busybox(self) -> bytes:
        return (self.path / "busybox").read_bytes()

    @property
    def qemu_arm64(self) -> Qemu | None:
        return qemu_in_root(self.path / "root", "aarch64")

    @property
    def kernel_arm64(self) -> Path:
        return self.path / "arm64" / "Image"

    @property
    def busybox_arm64(self) -> bytes:
        return (self.path / "arm64" / "busybox").read_bytes()

    def arm64_modules(self, *names: str) -> dict[str, bytes]:
        """Kernel modules from the arm64 Image's own package, as initramfs files under
        ``lib/modules/``."""
        return {f"lib/modules/{name}": (self.path / "arm64" / "modules" / name).read_bytes()
                for name in names}


def _key() -> str:
    return hashlib.sha256(PREPARE.read_bytes()).hexdigest()[:16]


def prepare(log: Path) -> tuple[Path, float]:
    """The cached image directory, built first when absent (one builder per machine)."""
    final = CACHE_ROOT / _key()
    if (final / "done").exists():
        return _cached(final, log)
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "done").exists():
            return _cached(final, log)
        started = time.monotonic()
        staging = CACHE_ROOT / f"{final.name}.tmp{os.getpid()}"
        with open(log, "wb") as out:  # written as it runs (readable then and after a timeout)
            try:
                returncode: int | str = subprocess.run(
                    ["bash", str(PREPARE), str(staging)], stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, timeout=1200, check=False).returncode
            except subprocess.TimeoutExpired:
                returncode = "timeout after 1200 s"
        text = log.read_text(errors="replace")
        if returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"prepare.sh failed (rc={returncode}):\n{text[-4000:]}")
        (staging / "done").write_text(text)
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        # Builds of other prepare.sh versions are dead weight once nobody uses them; other
        # checkouts on a shared machine may still boot from a recent one, so only builds
        # unused for a day go.
        for old in CACHE_ROOT.iterdir():
            if old.is_dir() and old != final and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        return final, time.monotonic() - started


def _cached(final: Path, log: Path) -> tuple[Path, float]:
    """This run's log says the image was cached (not an earlier run's outcome)."""
    log.write_text(f"cached image {final}; its preparation said:\n" + (final / "done").read_text())
    return final, 0.0
