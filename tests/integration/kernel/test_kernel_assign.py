"""``platpass assign``/``release`` end to end on the real arm64 kernel (one boot).

A vfio-user client inside the guest uses the server ``assign`` started, over UIO and over
kernel VFIO (no-IOMMU); see guest/assign.py for what each check does.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def run(kernel_scenario):
    return kernel_scenario("assign")


@pytest.mark.parametrize("name", ["scan.live_json", "scan.pl031_assignable",
                                  "scan.pl061_host_in_use",
                                  "scan.pl061_assignable_when_waived",
                                  "scan.virtio_mmio_refused_bus_master"])
def test_live_scan_verdicts(run, name: str) -> None:
    run.check(name)


def test_refused_node_is_refused_with_reasons(run) -> None:
    run.check("assign.refused_with_reasons")


def test_failed_bind_leaves_the_device_where_it_was(run) -> None:
    run.check("assign.failed_bind_leaves_device")


E2E = ["pl031.assigned", "pl061.assigned", "bound_and_recorded", "pl031.unprivileged",
       "pl031.control",
       "pl031.ids_mapped_and_trapped", "pl031.counter_moves", "pl061.ids_trapped",
       "pl061.irq_on_client_eventfd", "pl061.automask_then_unmask",
       "pl061.next_edge_after_ack", "pl061.unmask_eventfd_refires", "release.pl031",
       "release.pl061", "restored"]


@pytest.mark.parametrize("name", E2E)
@pytest.mark.parametrize("backend", ["uio", "vfio"])
def test_end_to_end(run, backend: str, name: str) -> None:
    run.check(f"e2e.{backend}.{name}")


def test_second_assign_of_an_assigned_device_is_refused(run) -> None:
    run.check("assign.twice_refused")


def test_foreground_server_restores_on_sigint(run) -> None:
    run.check("assign.foreground_sigint_restores")


def test_release_after_kill9_restores(run) -> None:
    run.check("kill9.assigned")
    run.check("kill9.unprivileged_child_stops")
    run.check("kill9.release_restores")
    run.check("kill9.release_resets_through_driver")


def test_every_step_completed(run) -> None:
    for step in ("modules", "scan", "refused", "failed_bind_rolls_back", "uio", "vfio",
                 "release_after_kill9", "foreground_sigint"):
        run.check(f"{step}.completed")
    assert run.rc == 0, run.tail()
