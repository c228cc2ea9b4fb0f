"""The arm64 image boots and the guest runs platpass (every module imports, libfdt works)."""

from __future__ import annotations


def test_guest_imports_every_platpass_module(kernel_scenario) -> None:
    run = kernel_scenario("smoke")
    detail = run.check("smoke.platpass_imports")
    assert detail["machine"] == "aarch64"


def test_guest_reads_live_fdt_with_pylibfdt(kernel_scenario) -> None:
    run = kernel_scenario("smoke")
    assert run.check("smoke.libfdt_reads_live_fdt")["size"] > 0
    assert run.rc == 0, run.tail()
