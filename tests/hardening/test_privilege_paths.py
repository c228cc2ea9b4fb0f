"""Paths a root process writes: sysfs attributes named by users, and the state file.

Complements tests/host/test_sysfs.py and test_binding.py (the kernel engineer's): those
show that one attribute symlink is refused and that a state round trip leaves no temporary
file. Here: every attribute write platpass makes goes through ``O_NOFOLLOW`` (a planted
symlink on any of them leaves its target untouched), names from users never become path
components, and the state file is replaced atomically (temporary file, fsync, rename: a
failure before the rename leaves the previous state whole).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from platpass.errors import HostError
from platpass.host import binding
from platpass.host.binding import Assignment, StateFile
from platpass.host.sysfs import SysfsDevice, SysfsWriteError, device_for_node


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A /sys with 9030000.pl061 bound to pl061_gpio, uio_pdrv_genirq registered."""
    root = tmp_path / "sys"
    dev = root / "devices" / "platform" / "9030000.pl061"
    dev.mkdir(parents=True)
    (dev / "driver_override").write_text("(null)\n")
    for name in ("pl061_gpio", "uio_pdrv_genirq"):
        drv = root / "bus" / "platform" / "drivers" / name
        drv.mkdir(parents=True)
        (drv / "bind").write_text("")
        (drv / "unbind").write_text("")
    (root / "bus" / "platform" / "drivers_probe").write_text("")
    os.symlink(root / "bus" / "platform" / "drivers" / "pl061_gpio", dev / "driver")
    devices = root / "bus" / "platform" / "devices"
    devices.mkdir(parents=True)
    os.symlink(dev, devices / "9030000.pl061")
    return root


def plant(path: Path, victim: Path) -> None:
    """Replace attribute ``path`` by a symlink to ``victim``."""
    path.unlink()
    os.symlink(victim, path)


@pytest.mark.parametrize(("attribute", "operation"), [
    ("devices/platform/9030000.pl061/driver_override",
     lambda d: d.set_driver_override("uio_pdrv_genirq")),
    ("bus/platform/drivers/pl061_gpio/unbind", lambda d: d.unbind()),
    ("bus/platform/drivers/uio_pdrv_genirq/bind", lambda d: d.bind("uio_pdrv_genirq")),
    ("bus/platform/drivers_probe", lambda d: d.probe()),
])
def test_no_attribute_write_follows_a_planted_symlink(sysfs: Path, tmp_path: Path,
                                                      attribute: str, operation: object
                                                      ) -> None:
    victim = tmp_path / "etc-shadow"
    victim.write_text("root:secret\n")
    plant(sysfs / attribute, victim)
    device = SysfsDevice("platform", "9030000.pl061", sysfs)
    with pytest.raises(SysfsWriteError) as info:
        operation(device)  # type: ignore[operator]
    assert info.value.errno == 40  # ELOOP: O_NOFOLLOW refused the last component
    assert victim.read_text() == "root:secret\n"


@pytest.mark.parametrize("name", ["../../../etc", "a/b", "..", ".", "x\n", "", "-x/.."])
def test_user_names_never_become_path_components(sysfs: Path, name: str) -> None:
    with pytest.raises(HostError, match="refusing"):
        SysfsDevice("platform", name, sysfs)
    device = SysfsDevice("platform", "9030000.pl061", sysfs)
    before = (sysfs / "devices/platform/9030000.pl061/driver_override").read_text()
    with pytest.raises(HostError, match="refusing"):
        device.bind(name)
    with pytest.raises(HostError, match="refusing"):
        device.set_driver_override(name)
    assert (sysfs / "devices/platform/9030000.pl061/driver_override").read_text() == before
    if name not in ("", "x\n"):
        with pytest.raises(HostError):
            device_for_node("/" + name, sysfs)


def entry(name: str = "9030000.pl061") -> Assignment:
    return Assignment(node="/pl061@9030000", bus="platform", device=name,
                      original_driver="pl061_gpio", original_override=None,
                      host_driver="uio_pdrv_genirq", backend="uio", pid=1)


def test_state_is_fsynced_before_the_rename(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateFile(tmp_path / "run")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(binding.os, "fsync", fsync)
    monkeypatch.setattr(binding.os, "replace", replace)
    with state.locked() as entries:
        entries["9030000.pl061"] = entry()
    monkeypatch.undo()
    assert [kind for kind, _ in events] == ["fsync", "replace"]
    assert events[0][1] == events[1][1]  # the fsynced file is the one renamed into place
    assert events[1][1] != str(state.path)
    assert json.loads(state.path.read_text())["devices"]["9030000.pl061"]["pid"] == 1


def test_failure_before_the_rename_keeps_the_previous_state_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateFile(tmp_path / "run")
    with state.locked() as entries:
        entries["9030000.pl061"] = entry()
    before = state.path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(binding.os, "replace", crash)
    with pytest.raises(OSError), state.locked() as entries:
        entries.clear()
        entries["9040000.pl031"] = entry("9040000.pl031")
    monkeypatch.undo()
    assert state.path.read_bytes() == before
    assert state.read() == {"9030000.pl061": entry()}


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "run")
    state.directory.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    os.symlink(victim, state.directory / f".assignments.json.{os.getpid()}")
    try:
        with state.locked() as entries:
            entries["9030000.pl061"] = entry()
    except HostError:
        pass  # refusing is fine; writing through the link is not
    assert victim.read_text() == "keep\n"
    assert not state.path.is_symlink()
