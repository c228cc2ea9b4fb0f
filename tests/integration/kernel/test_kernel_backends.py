"""platpass's sysfs, UIO and kernel-VFIO backends on Debian's real arm64 kernel (one boot).

The guest binds QEMU's PL031/PL061 to uio_pdrv_genirq, then to vfio-platform (no-IOMMU),
and drives them through :class:`UioBackend` / :class:`VfioKernelBackend` on an
:class:`EpollReactor`; the PL061 interrupt is raised from the host (``system_powerdown``).
"""

from __future__ import annotations

import pytest

IRQ_CHECKS = ("irq_fires", "automask_holds", "unmask_refires_pending", "second_edge_after_ack",
              "mask_holds_then_unmask_delivers", "close_unregisters")


@pytest.fixture(scope="module")
def run(kernel_scenario):
    return kernel_scenario("backends")


@pytest.mark.parametrize("name", ["sysfs.node_to_device", "sysfs.of_node",
                                  "sysfs.refuses_traversal", "sysfs.unbound_at_boot"])
def test_sysfs(run, name: str) -> None:
    run.check(name)


@pytest.mark.parametrize("name", ["uio.bound", "uio.pl031.layout", "uio.pl031.ids",
                                  "uio.pl031.counter_moves", "uio.pl061.ids"]
                         + [f"uio.pl061.{c}" for c in IRQ_CHECKS])
def test_uio_backend(run, name: str) -> None:
    run.check(name)


@pytest.mark.parametrize("name", ["vfio.bound", "vfio.pl031.noiommu", "vfio.pl031.info",
                                  "vfio.pl031.ids", "vfio.pl031.counter_moves",
                                  "vfio.pl031.ids_by_pread", "vfio.pl061.ids"]
                         + [f"vfio.pl061.{c}" for c in IRQ_CHECKS])
def test_vfio_kernel_backend(run, name: str) -> None:
    run.check(name)


def test_serve_opens_kernel_vfio_backend(run) -> None:
    run.check("serve.vfio_backend_open_backend")
    run.check("serve.stops_on_sigterm")


def test_every_step_completed(run) -> None:
    for step in ("sysfs_lookup", "uio", "vfio", "serve_already_bound"):
        run.check(f"{step}.completed")
    assert run.rc == 0, run.tail()
