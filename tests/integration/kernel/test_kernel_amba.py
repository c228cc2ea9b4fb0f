"""Devices that start on real kernel drivers go back to them (QEMU's AMBA DTB, one boot)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def run(kernel_scenario):
    return kernel_scenario("amba", dtb="amba")


@pytest.mark.parametrize("name", ["amba.rtc_on_kernel_driver", "amba.uio_refused_untouched",
                                  "amba.assigned_to_vfio_amba",
                                  "amba.client_counter_mapped_then_trapped",
                                  "amba.release_restores_rtc_pl031",
                                  "amba.kill9_release_restores",
                                  "amba.late_failure_rolls_back"])
def test_amba(run, name: str) -> None:
    run.check(name)


def test_every_step_completed(run) -> None:
    for step in ("modules", "uio_refused", "assign_release", "kill9",
                 "late_failure_rolls_back"):
        run.check(f"{step}.completed")
    assert run.rc == 0, run.tail()
