"""Shared set-up: the tool check, the real device trees, the arm64 image, QEMU's virt DTB.

Before the first test, the session stops (naming what is missing and what to do) when a
program the suite runs is absent (``needed_tools.py``) or the pinned real device trees
cannot be had (``real_dtbs.py``): no test turns into an error deep inside a fixture.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import needed_tools
import real_dtbs

REPO = Path(__file__).resolve().parents[1]
KERNEL_HARNESS = REPO / "tests" / "integration" / "kernel"
#: Where the arm64 image's preparation log and the guests' console logs go.
KERNEL_LOGS = Path(os.environ.get("PLATPASS_KERNEL_LOGS", "/tmp/platpass-kernel-logs"))


def pytest_sessionstart(session: pytest.Session) -> None:
    absent = needed_tools.missing()
    if absent:
        pytest.exit(needed_tools.report(absent), returncode=3)
    # The C fast path of this checkout, built in place (scripts/test has done it already;
    # a plain ``pytest`` run gets it here), before any test module imports platpass.
    built = subprocess.run([sys.executable, str(REPO / "scripts" / "build-native"), "--quiet"],
                           capture_output=True, text=True)
    if built.returncode:
        pytest.exit(f"scripts/build-native failed: {built.stderr.strip()}", returncode=3)
    try:
        real_dtbs.ensure(say=lambda line: print(line, file=sys.stderr, flush=True))
    except (RuntimeError, OSError) as err:
        pytest.exit(f"the real device trees the suite needs are not available: {err}",
                    returncode=3)


@pytest.fixture(scope="session")
def shared_dtbs() -> list[Path]:
    """Every real board DTB (48 boards from Debian's pinned arm64 kernel: ``real_dtbs.py``)."""
    return list(real_dtbs.PATHS)


@pytest.fixture(scope="session")
def dtc() -> str:
    """Path of ``dtc`` (the session start checked that it is there)."""
    path = shutil.which("dtc")
    assert path, "dtc missing: run scripts/install --test"
    return path


@pytest.fixture(scope="session")
def arm64_image():
    """The real-kernel test image (``tests/integration/kernel/prepare.sh``): prepared at most
    once per run and shared by every test that boots it (cached between runs). When the
    preparation fails, every such test reports that one failure and where its log is."""
    if str(KERNEL_HARNESS) not in sys.path:
        sys.path.insert(0, str(KERNEL_HARNESS))
    import kernel_harness

    KERNEL_LOGS.mkdir(parents=True, exist_ok=True)
    log = KERNEL_LOGS / "prepare.log"
    try:
        image = kernel_harness.prepare_image(log)
    except (RuntimeError, OSError) as err:
        failure = "\n".join(str(err).splitlines()[-25:])
    else:
        failure = None
    if failure is not None:  # outside the except: no chained traceback in every report
        pytest.fail(f"preparing the arm64 image failed (once for this run; every test that "
                    f"boots it reports this). Full log: {log}\n{failure}", pytrace=False)
    print(f"\narm64 image {image.path} (prepare {image.prepare_seconds:.1f}s, log {log})")
    return image


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


@pytest.fixture(params=["C", "Python"])
def fast_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once with the C fast path (``platpass.vfio_user._native``) and once
    with the Python one: servers and clients made during the test take the path named.
    Modules whose servers answer trapped accesses use it (``pytestmark``)."""
    from platpass.vfio_user import client, native, server

    if request.param == "Python":
        monkeypatch.setattr(server, "NATIVE", None)
        monkeypatch.setattr(client, "NATIVE", None)
        monkeypatch.setenv("PLATPASS_NATIVE", "0")  # and the processes the test starts
    elif native.NATIVE is None:  # scripts/build-native ran at session start
        pytest.fail(f"the C fast path is not available: {native.UNAVAILABLE}")
    else:
        monkeypatch.delenv("PLATPASS_NATIVE", raising=False)
    return str(request.param)
