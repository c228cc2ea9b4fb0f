"""Fixtures that boot the real arm64 kernel (see kernel_harness.py for how)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_harness import GuestRun, Image, boot, prepare_image

LOG_DIR = Path(os.environ.get("PLATPASS_KERNEL_LOGS", "/tmp/platpass-kernel-logs"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory boots the kernel: mark them so ``-m 'not kernel'`` works."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session")
def arm64_image() -> Image:
    """The prepared image (built on first use, then cached between runs)."""
    for tool in ("qemu-system-aarch64", "qemu-aarch64", "aarch64-linux-gnu-gcc", "dtc", "cpio"):
        if shutil.which(tool) is None:
            if tool == "qemu-system-aarch64":
                pytest.skip("qemu-system-aarch64 is not installed (scripts/install --test)")
            pytest.fail(f"{tool} missing: run scripts/install --test")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    image = prepare_image(LOG_DIR / "prepare.log")
    print(f"\narm64 image {image.path} (prepare {image.prepare_seconds:.1f}s)")
    return image


@pytest.fixture(scope="session")
def kernel_scenario(arm64_image: Image) -> Callable[..., GuestRun]:
    """``kernel_scenario(name, dtb=..., append=...)``: boot once per distinct argument set
    and share the result between the tests that read its checks."""
    cache: dict[tuple[str, str, str], GuestRun] = {}

    def run(name: str, dtb: str = "platform", append: str = "") -> GuestRun:
        key = (name, dtb, append)
        if key not in cache:
            log = LOG_DIR / f"{name}-{dtb}.log"
            cache[key] = boot(arm64_image, name, dtb=dtb, append=append, log_path=log)
            result = cache[key]
            print(f"\nboot {name}/{dtb}: to BEGIN {result.seconds_to_begin}s, total "
                  f"{result.seconds_total:.1f}s, rc={result.rc}, log {log}")
        return cache[key]

    return run
