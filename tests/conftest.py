"""Shared fixtures: paths to the real device trees and tools the suite sets up itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real arm64 device trees from Debian's kernel package, shipped beside the project.
SHARED_DTBS = REPO.parent / "shared" / "dtbs"


@pytest.fixture(scope="session")
def shared_dtbs() -> list[Path]:
    """Every real board DTB in ``../shared/dtbs`` (the suite fails loudly if it is gone)."""
    dtbs = sorted(SHARED_DTBS.glob("*.dtb"))
    assert dtbs, f"no DTBs under {SHARED_DTBS}"
    return dtbs


@pytest.fixture(scope="session")
def dtc() -> str:
    """Path of ``dtc``; scripts/install --test installs it, so it must be there."""
    path = shutil.which("dtc")
    assert path, "dtc missing: run scripts/install --test"
    return path


@pytest.fixture(scope="session")
def qemu_virt_dtb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QEMU's own ``virt`` machine DTB, dumped by the installed qemu-system-aarch64."""
    import subprocess

    qemu = shutil.which("qemu-system-aarch64")
    assert qemu, "qemu-system-aarch64 missing: run scripts/install --test"
    path = tmp_path_factory.mktemp("qemu-virt") / "virt.dtb"
    subprocess.run(
        [qemu, "-M", "virt", "-machine", f"dumpdtb={path}", "-nic", "none"],
        check=True, capture_output=True, timeout=60,
    )
    return path


@pytest.fixture(autouse=True)
def _platpass_logger_restored() -> Iterator[None]:
    """Every test starts with the ``platpass`` logger as the suite found it: a test that
    calls ``configure_logging`` (which stops propagation) must not hide later tests'
    records from ``caplog``."""
    import logging

    logger = logging.getLogger("platpass")
    saved = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    yield
    logger.handlers[:] = saved[0]
    logger.level, logger.propagate, logger.disabled = saved[1], saved[2], saved[3]
