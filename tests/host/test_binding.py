"""Binding bookkeeping: rollback on a failed bind, the state file, dead-server recovery.

The sysfs tree is a real directory laid out like the kernel's; it cannot run probes, so a
bind there never takes effect — exactly the failure the rollback must handle. Server
processes are real child processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from platpass.errors import BindError, HostError
from platpass.host import binding
from platpass.host.binding import Assignment, StateFile
from platpass.host.sysfs import SysfsDevice


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """/sys with 9030000.pl061 bound to pl061_gpio and an (inert) uio_pdrv_genirq."""
    root = tmp_path / "sys"
    dev = root / "devices" / "platform" / "9030000.pl061"
    dev.mkdir(parents=True)
    (dev / "driver_override").write_text("(null)\n")
    for name in ("pl061_gpio", "uio_pdrv_genirq"):
        drv = root / "bus" / "platform" / "drivers" / name
        drv.mkdir(parents=True)
        (drv / "bind").write_text("")
        (drv / "unbind").write_text("")
    os.symlink(root / "bus/platform/drivers/pl061_gpio", dev / "driver")
    (root / "bus" / "platform" / "devices").mkdir(parents=True)
    os.symlink(dev, root / "bus/platform/devices/9030000.pl061")
    return root


def entry(**changes: object) -> Assignment:
    base = dict(node="/pl061@9030000", bus="platform", device="9030000.pl061",
                original_driver="pl061_gpio", original_override=None,
                host_driver="uio_pdrv_genirq", backend="uio")
    base.update(changes)
    return Assignment(**base)  # type: ignore[arg-type]


def test_failed_bind_puts_the_device_back(sysfs: Path) -> None:
    device = SysfsDevice("platform", "9030000.pl061", sysfs)
    with pytest.raises(BindError, match="left on pl061_gpio"):
        binding.bind_device(device, "uio_pdrv_genirq")
    assert device.driver == "pl061_gpio"
    assert device.driver_override is None


def test_bind_to_unregistered_driver_touches_nothing(sysfs: Path) -> None:
    device = SysfsDevice("platform", "9030000.pl061", sysfs)
    with pytest.raises(BindError, match="'vfio-platform' is not registered"):
        binding.bind_device(device, "vfio-platform")
    assert device.driver_override is None
    assert (sysfs / "bus/platform/drivers/pl061_gpio/unbind").read_text() == "9030000.pl061"


def test_host_driver_for_amba_uio_is_explained() -> None:
    assert binding.host_driver_for("vfio", "amba") == "vfio-amba"
    with pytest.raises(HostError, match="uio_pdrv_genirq is a platform driver"):
        binding.host_driver_for("uio", "amba")


def test_state_file_round_trip_is_atomic(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "run")
    with state.locked() as entries:
        entries["9030000.pl061"] = entry(force_unsafe=True, warnings=("forced",))
    assert state.read() == {"9030000.pl061": entry(force_unsafe=True, warnings=("forced",))}
    leftovers = [p.name for p in (tmp_path / "run").iterdir()]
    assert sorted(leftovers) == [".lock", "assignments.json"]


def test_corrupt_state_file_is_an_error_not_an_empty_state(tmp_path: Path) -> None:
    state = StateFile(tmp_path)
    state.path.write_text("{not json")
    with pytest.raises(HostError, match="corrupt"), state.locked():
        pass
    assert state.path.read_text() == "{not json"


def test_server_alive_follows_the_real_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        recorded = binding.with_pid(entry(), child.pid)
        assert binding.server_alive(recorded)
        assert not binding.server_alive(binding.replace(recorded, pid_start=1))  # reused pid
        child.kill()
        child.wait()
        assert not binding.server_alive(recorded)
    finally:
        child.kill()
        child.wait()


def test_zombie_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    recorded = binding.with_pid(entry(), child.pid)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    assert not binding.server_alive(recorded)
    child.wait()


def test_stop_server_kills_one_that_ignores_sigterm() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"up\n"
    recorded = binding.with_pid(entry(), child.pid)
    assert binding.stop_server(recorded, timeout=0.3) is False
    assert child.wait(timeout=5) == -signal.SIGKILL


def test_recover_stale_restores_devices_of_dead_servers(sysfs: Path, tmp_path: Path) -> None:
    device = SysfsDevice("platform", "9030000.pl061", sysfs)
    device.set_driver_override("uio_pdrv_genirq")
    state = StateFile(tmp_path / "run")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        left_behind = socket.socket(socket.AF_UNIX)
        left_behind.bind(str(tmp_path / "dead.sock"))
        left_behind.close()
        with state.locked() as entries:
            entries["9030000.pl061"] = binding.replace(entry(), pid=child.pid, pid_start=None,
                                                       socket=str(tmp_path / "dead.sock"))
            entries["other"] = binding.with_pid(entry(device="9010000.pl031"), live.pid)
        reset_called = []
        recovered = binding.recover_stale(state, sysfs, reset=reset_called.append)
        assert [(e.device, problems) for e, problems in recovered] == [("9030000.pl061", [])]
        assert [e.device for e in reset_called] == ["9030000.pl061"]
        assert device.driver_override is None and device.driver == "pl061_gpio"
        assert list(state.read()) == ["other"]  # a live server's device is left alone
        assert not (tmp_path / "dead.sock").exists()
    finally:
        live.kill()
        live.wait()


def test_state_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    os.symlink(real, tmp_path / "run")
    with pytest.raises(HostError, match="not a directory owned by"), \
            StateFile(tmp_path / "run").locked():
        pass
    assert list(real.iterdir()) == []


def test_auto_backend_prefers_the_module_when_loaded_then_uio(tmp_path: Path) -> None:
    assert binding.auto_backend("platform", tmp_path) == "uio"
    assert binding.auto_backend("amba", tmp_path) == "uio"  # refused by host_driver_for, named
    (tmp_path / "bus/platform/drivers/platpass-vfio-platform").mkdir(parents=True)
    (tmp_path / "bus/amba/drivers/platpass-vfio-amba").mkdir(parents=True)
    assert binding.auto_backend("platform", tmp_path) == "kmod"
    assert binding.auto_backend("amba", tmp_path) == "kmod"
    assert binding.host_driver_for("kmod", "amba") == "platpass-vfio-amba"
