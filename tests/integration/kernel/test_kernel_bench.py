"""``bench/irq.py --backend uio`` runs inside the guest and reports its figures beside the
kernel VFIO baseline (the figures are printed, not asserted: benchmarks are not tests)."""

from __future__ import annotations


def test_irq_bench_reports_uio_bridge_against_kernel_vfio(kernel_scenario) -> None:
    run = kernel_scenario("bench")
    lines = run.check("bench.irq_uio")["stdout"]
    print("\n".join(lines))
    assert any(line.startswith("kernel VFIO eventfd (baseline)") for line in lines)
    assert any(line.startswith("platpass UIO bridge") for line in lines)
