"""platpass over the project's kernel module (one boot, platform DTB): ``scan --live`` and
``assign`` choose it, ``serve --backend vfio`` passes interrupts straight through (nothing
relayed by the server), and ``bench/irq_kmod.py`` reports its figures (printed, not
asserted: benchmarks are not tests). See guest/passthrough.py."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def run(kernel_scenario):
    return kernel_scenario("passthrough", kmod=True)


@pytest.mark.parametrize("name", [
    "passthrough.scan_names_the_module", "passthrough.assign_prefers_the_module",
    "passthrough.assigned_pl031_mapped_from_kernel_fd", "passthrough.release_restores",
    "passthrough.serve_relays_no_interrupt", "passthrough.serve_stops"])
def test_passthrough(run, name: str) -> None:
    run.check(name)


def test_irq_bench_reports_pass_through_against_raw_and_uio(run) -> None:
    lines = run.check("bench.irq_kmod")["stdout"]
    print("\n".join(lines))
    assert any(line.startswith("ratio pass-through / raw kernel VFIO eventfd") for line in lines)
    assert any(line.startswith("platpass UIO bridge") for line in lines)


def test_every_step_completed(run) -> None:
    for step in ("modules", "scan", "assign_auto", "serve_passthrough", "bench"):
        run.check(f"{step}.completed")
    assert run.rc == 0, run.tail()
