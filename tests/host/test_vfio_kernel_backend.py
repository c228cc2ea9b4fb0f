"""Kernel VFIO backend outside the guest: how it explains what is missing.

The real ioctls run in tests/integration/kernel (Debian's arm64 kernel, vfio-platform in
no-IOMMU mode); here a sysfs/dev tree in tmp_path shows the errors a user meets first.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from platpass.errors import HostError
from platpass.host.vfio_kernel.backend import VfioKernelBackend, group_path
from platpass.host.vfio_kernel.syscalls import KernelCallError, Syscalls
from platpass.host.vfio_kernel.uapi import VfioIoctl


def make_device(root: Path, group: str | None) -> Path:
    device = root / "sys" / "bus" / "platform" / "devices" / "9030000.pl061"
    device.mkdir(parents=True)
    if group is not None:
        groups = root / "sys" / "kernel" / "iommu_groups" / group
        groups.mkdir(parents=True)
        os.symlink(groups, device / "iommu_group")
    return device


def test_device_without_group_says_how_to_get_one(tmp_path: Path) -> None:
    device = make_device(tmp_path, None)
    with pytest.raises(HostError, match=r"no IOMMU group .*enable_unsafe_noiommu_mode"):
        group_path(device, tmp_path / "dev")


def test_noiommu_group_node_is_found(tmp_path: Path) -> None:
    device = make_device(tmp_path, "3")
    (tmp_path / "dev" / "vfio").mkdir(parents=True)
    (tmp_path / "dev" / "vfio" / "noiommu-3").touch()
    assert group_path(device, tmp_path / "dev") == tmp_path / "dev/vfio/noiommu-3"


def test_missing_container_is_a_kernel_call_error_with_errno(tmp_path: Path) -> None:
    make_device(tmp_path, "0")
    (tmp_path / "dev" / "vfio").mkdir(parents=True)
    (tmp_path / "dev" / "vfio" / "0").touch()
    with pytest.raises(KernelCallError) as info:
        VfioKernelBackend("9030000.pl061", sysfs=tmp_path / "sys", dev=tmp_path / "dev")
    assert info.value.errno == errno.ENOENT
    assert info.value.call == "open" and info.value.target.endswith("dev/vfio/vfio")


@pytest.mark.parametrize("name", ["../x", "a/b", ""])
def test_bad_device_names_are_refused(name: str) -> None:
    with pytest.raises(HostError, match="bad device"):
        VfioKernelBackend(name)


def test_ioctl_error_names_the_request_and_object(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(KernelCallError, match=r"ioctl 0x3b64 on container failed") as info:
            Syscalls().ioctl(fd, 0x3B64, 0, "container")
        assert info.value.errno == errno.ENOTTY
        with pytest.raises(KernelCallError, match=r"ioctl DEVICE_SET_IRQS \(0x3b6e\) on pl061"):
            Syscalls().ioctl(fd, VfioIoctl.DEVICE_SET_IRQS, b"\0" * 20, "pl061")
    finally:
        os.close(fd)
