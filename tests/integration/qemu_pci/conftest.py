"""Fixtures for the QEMU vfio-user-pci tests (the image is built by :mod:`qemu_image`).
Every test here is marked ``qemu`` (``-m 'not qemu'`` leaves them out)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from qemu_image import HERE, LOG_DIR, QemuImage, prepare

from platpass.vmm.qemu_pci import qemu_in_root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.qemu)


@pytest.fixture(scope="session")
def qemu_image() -> QemuImage:
    """QEMU >= 10.1 and the guest's kernel and busybox (prepared on first use)."""
    for tool in ("debootstrap", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: run scripts/install --test")
    if os.geteuid() != 0:
        pytest.fail("building the QEMU root (debootstrap) needs root")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "prepare.log"
    try:
        path, seconds = prepare(log)
    except (RuntimeError, OSError) as err:
        failure = "\n".join(str(err).splitlines()[-25:])
    else:
        failure = None
    if failure is not None:  # once per run (pytest keeps a session fixture's failure)
        pytest.fail(f"preparing the QEMU root failed (once for this run; every test that "
                    f"needs it reports this). Full log: {log}\n{failure}", pytrace=False)
    os.utime(path)  # in use: see prepare()
    qemu = qemu_in_root(path / "root")
    assert qemu is not None and qemu.has_vfio_user_pci, f"no QEMU >= 10.1 in {path}/root"
    print(f"\nQEMU {'.'.join(map(str, qemu.version))} from {path} (prepare {seconds:.1f}s)")
    return QemuImage(path, qemu, seconds)
