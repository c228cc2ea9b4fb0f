"""The project's kernel module (kmod/) on Debian's real arm64 kernel (one boot).

Built at test time against the image's kernel headers with the cross compiler (a compiler
warning fails it); the guest loads Debian's own vfio/vfio_iommu_type1, then the module,
and checks what guest/kmod.py describes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

KMOD = Path(__file__).resolve().parents[3] / "kmod"


@pytest.fixture(scope="module")
def run(kernel_scenario):
    return kernel_scenario("kmod", dtb="kmod", kmod=True)


@pytest.mark.parametrize("name", [
    "kmod.loaded", "kmod.bound", "kmod.no_taint_user",
    "kmod.refuses_dma_coherent", "kmod.refuses_unknown_compatible",
    "kmod.pl031.emulated_iommu", "kmod.pl031.info", "kmod.pl031.ids",
    "kmod.pl031.counter_moves", "kmod.dma_map_pins_nothing", "kmod.pl031.reset",
    "kmod.pl061.ids", "kmod.pl061.irq_eventfd_automask_unmask",
    "kmod.works_without_cap_sys_rawio",
    "kmod.pl011.dmacr_page_not_mappable", "kmod.pl011.dmacr_dma_bits_unwritable",
    "kmod.unbind_rmmod_leave_nothing"])
def test_kmod(run, name: str) -> None:
    run.check(name)


def test_every_step_completed(run) -> None:
    for step in ("load", "bind", "refusals", "pl031_amba", "pl061_irq", "without_rawio",
                 "pl011_dmacr", "unbind_and_unload"):
        run.check(f"{step}.completed")
    assert run.rc == 0, run.tail()


def test_kmod_sources_are_checkpatch_clean(arm64_image) -> None:
    """The kernel's own checkpatch.pl (from Debian's linux-source, kept by prepare.sh)."""
    script = arm64_image.path / "kbuild" / "scripts" / "checkpatch.pl"
    if shutil.which("perl") is None:
        pytest.fail("perl missing: run scripts/install --test")
    sources = sorted(str(p) for p in KMOD.iterdir()
                     if p.suffix in (".c", ".h") or p.name in ("Kbuild", "Makefile"))
    out = subprocess.run(["perl", str(script), "--no-tree", "--strict", "--terse", "-f",
                          *sources], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr
