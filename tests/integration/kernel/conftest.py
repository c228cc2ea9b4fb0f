"""Fixtures that boot the real arm64 kernel (see kernel_harness.py for how). The image
itself is ``arm64_image`` in tests/conftest.py, shared with tests/guest/test_guest_boot.py."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_harness import GuestRun, Image, boot, build_kmod, kmod_dtb

LOG_DIR = Path(os.environ.get("PLATPASS_KERNEL_LOGS", "/tmp/platpass-kernel-logs"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory boots the kernel: mark them so ``-m 'not kernel'`` works."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session")
def kmod_files(arm64_image: Image) -> dict[str, bytes]:
    """The project's kmod/ built for the image's kernel (guest path -> module)."""
    for tool in ("make", "aarch64-linux-gnu-strip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: run scripts/install --test")
    return build_kmod(arm64_image)


@pytest.fixture(scope="session")
def kernel_scenario(arm64_image: Image, tmp_path_factory: pytest.TempPathFactory,
                    request: pytest.FixtureRequest) -> Callable[..., GuestRun]:
    """``kernel_scenario(name, dtb=..., append=..., kmod=False)``: boot once per distinct
    argument set and share the result between the tests that read its checks. ``kmod``
    adds the project's kernel module (built once per session) under /lib/modules/kmod;
    ``dtb="kmod"`` is :func:`kernel_harness.kmod_dtb`."""
    cache: dict[tuple[str, str, str, bool], GuestRun] = {}

    def run(name: str, dtb: str = "platform", append: str = "",
            kmod: bool = False) -> GuestRun:
        key = (name, dtb, append, kmod)
        if key not in cache:
            log = LOG_DIR / f"{name}-{dtb}.log"
            extra = request.getfixturevalue("kmod_files") if kmod else None
            dtb_arg: str | Path = dtb
            if dtb == "kmod":
                dtb_arg = kmod_dtb(arm64_image, tmp_path_factory.mktemp("dtb") / "kmod.dtb")
            cache[key] = boot(arm64_image, name, dtb=dtb_arg, append=append, log_path=log,
                              extra=extra)
            result = cache[key]
            print(f"\nboot {name}/{dtb}: to BEGIN {result.seconds_to_begin}s, total "
                  f"{result.seconds_total:.1f}s, rc={result.rc}, log {log}")
        return cache[key]

    return run
