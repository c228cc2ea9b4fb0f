"""sysfs helpers on a tree laid out like the kernel's (real files and symlinks in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from platpass.errors import HostError
from platpass.host.sysfs import SysfsDevice, device_for_node, read_attr, write_attr


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """/sys with one platform device (9030000.pl061) bound to ``pl061_gpio``."""
    root = tmp_path / "sys"
    dev = root / "devices" / "platform" / "9030000.pl061"
    dev.mkdir(parents=True)
    (dev / "driver_override").write_text("(null)\n")
    dt = root / "firmware" / "devicetree" / "base" / "pl061@9030000"
    dt.mkdir(parents=True)
    os.symlink(dt, dev / "of_node")
    drv = root / "bus" / "platform" / "drivers" / "pl061_gpio"
    drv.mkdir(parents=True)
    (drv / "bind").write_text("")
    (drv / "unbind").write_text("")
    os.symlink(drv, dev / "driver")
    devices = root / "bus" / "platform" / "devices"
    devices.mkdir(parents=True)
    os.symlink(dev, devices / "9030000.pl061")
    return root


def test_reads_driver_and_override(sysfs: Path) -> None:
    device = SysfsDevice("platform", "9030000.pl061", sysfs)
    assert device.driver == "pl061_gpio"
    assert device.driver_override is None
    assert device.of_node == "/pl061@9030000"


def test_maps_node_path_and_name_to_device(sysfs: Path) -> None:
    expected = SysfsDevice("platform", "9030000.pl061", sysfs)
    assert device_for_node("/pl061@9030000", sysfs) == expected
    assert device_for_node("9030000.pl061", sysfs) == expected
    with pytest.raises(HostError, match="no platform or AMBA device for DT node /uart@0"):
        device_for_node("/uart@0", sysfs)


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "", ".hidden"])
def test_refuses_names_that_are_not_kernel_names(sysfs: Path, name: str) -> None:
    with pytest.raises(HostError, match="refusing"):
        SysfsDevice("platform", name, sysfs)


def test_refuses_traversal_in_node_path(sysfs: Path) -> None:
    with pytest.raises(HostError, match="refusing node path"):
        device_for_node("/pl061@9030000/../../etc", sysfs)


def test_unbind_writes_the_name_to_the_drivers_unbind(sysfs: Path) -> None:
    SysfsDevice("platform", "9030000.pl061", sysfs).unbind()
    assert (sysfs / "bus/platform/drivers/pl061_gpio/unbind").read_text() == "9030000.pl061"


def test_bind_to_missing_driver_is_explained(sysfs: Path) -> None:
    with pytest.raises(HostError, match="'uio_pdrv_genirq' is not registered"):
        SysfsDevice("platform", "9030000.pl061", sysfs).bind("uio_pdrv_genirq")


def test_attribute_writes_never_follow_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("keep")
    os.symlink(target, tmp_path / "driver_override")
    with pytest.raises(HostError, match="failed"):
        write_attr(tmp_path / "driver_override", "evil\n")
    with pytest.raises(HostError):
        read_attr(tmp_path / "driver_override")
    assert target.read_text() == "keep"
