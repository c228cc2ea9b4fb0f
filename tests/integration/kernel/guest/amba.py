"""Scenario ``amba`` (QEMU's own DTB): devices that start on real kernel drivers.

The PL031 is an AMBA device bound to ``rtc-pl031`` at boot. ``assign --backend vfio`` moves
it to ``vfio-amba``; ``release`` must put it back on ``rtc-pl031``, also after the server
was killed with SIGKILL. ``--backend uio`` is refused for an AMBA device (uio_pdrv_genirq
is a platform driver) without touching it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from kcheck import check, counted_seconds, run_steps

from platpass.host.sysfs import SysfsDevice

RTC = SysfsDevice("amba", "9010000.pl031")
STATE = "/run/platpass/assignments.json"


def platpass(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "platpass", *args], capture_output=True,
                          text=True, timeout=60)


def state() -> dict:
    try:
        with open(STATE) as f:
            return json.load(f)["devices"]
    except FileNotFoundError:
        return {}


def modules() -> None:
    for path, *params in (("/lib/modules/debian/vfio_virqfd.ko",),
                          ("/lib/modules/platpass/vfio.ko", "enable_unsafe_noiommu_mode=1"),
                          ("/lib/modules/platpass/vfio-platform-base.ko",),
                          ("/lib/modules/platpass/vfio-amba.ko",),
                          ("/lib/modules/debian/uio.ko",),
                          ("/lib/modules/platpass/uio_pdrv_genirq.ko",)):
        subprocess.run(["insmod", path, *params], check=True)
    check("amba.rtc_on_kernel_driver", RTC.driver == "rtc-pl031", driver=RTC.driver)


def uio_refused() -> None:
    out = platpass("assign", "/pl031@9010000", "--backend", "uio", "--socket", "/run/u.sock")
    check("amba.uio_refused_untouched", out.returncode == 1 and "AMBA" in out.stderr
          and RTC.driver == "rtc-pl031" and RTC.driver_override is None and not state(),
          rc=out.returncode, stderr=out.stderr, driver=RTC.driver)


def assign_release() -> None:
    from platpass.vfio_user.client import VfioUserClient

    out = platpass("assign", "/pl031@9010000", "--backend", "vfio", "--socket", "/run/r.sock")
    entry = state().get("9010000.pl031", {})
    check("amba.assigned_to_vfio_amba", out.returncode == 0 and RTC.driver == "vfio-amba"
          and entry.get("original_driver") == "rtc-pl031",
          rc=out.returncode, stderr=out.stderr, driver=RTC.driver, entry=entry)
    client = VfioUserClient.connect("/run/r.sock")
    region = client.region_info(0)
    mapped = client.map_region(0)
    t0, m0 = (mapped.read32(0) if mapped.areas else None), time.monotonic()
    time.sleep(1.2)
    t1, elapsed = client.read(0, 0, 4), time.monotonic() - m0
    check("amba.client_counter_mapped_then_trapped",
          t0 is not None and counted_seconds(t0, t1, elapsed)
          and int(client.device_info().flags) & 8 != 0,
          t0=t0, t1=t1, elapsed=elapsed, flags=int(client.device_info().flags))
    mapped.close()
    if region.fd is not None:
        os.close(region.fd)
    client.close()
    out = platpass("release", "/pl031@9010000")
    check("amba.release_restores_rtc_pl031", out.returncode == 0 and RTC.driver == "rtc-pl031"
          and RTC.driver_override is None and not state(),
          rc=out.returncode, stdout=out.stdout, stderr=out.stderr, driver=RTC.driver)


def kill9() -> None:
    out = platpass("assign", "/pl031@9010000", "--backend", "vfio", "--socket", "/run/k.sock")
    pid = state().get("9010000.pl031", {}).get("pid")
    if out.returncode != 0 or not pid:
        check("amba.kill9_release_restores", False, rc=out.returncode, stderr=out.stderr)
        return
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    held = RTC.driver
    out = platpass("release", "/pl031@9010000")
    check("amba.kill9_release_restores", held == "vfio-amba" and out.returncode == 0
          and RTC.driver == "rtc-pl031" and not state(),
          held=held, rc=out.returncode, stdout=out.stdout, stderr=out.stderr,
          driver=RTC.driver)


def late_failure_rolls_back() -> None:
    """A failure after the bind rolls back too. Unbinding pl061_gpio leaves its parent
    interrupt flagged IRQ_NOREQUEST (it was a chained handler), so vfio-amba probes but the
    kernel refuses SET_IRQS when the backend attaches: ``assign`` must fail and put the
    PL061 back on pl061_gpio."""
    gpio = SysfsDevice("amba", "9030000.pl061")
    before = gpio.driver
    out = platpass("assign", "/pl061@9030000", "--backend", "vfio", "--socket", "/run/g.sock",
                   "--override", "/pl061@9030000=host-consumer,live-consumer")
    check("amba.late_failure_rolls_back", before == "pl061_gpio" and out.returncode == 1
          and gpio.driver == "pl061_gpio" and gpio.driver_override is None and not state()
          and not os.path.exists("/run/g.sock") and "DEVICE_SET_IRQS" in out.stderr,
          before=before, rc=out.returncode, stdout=out.stdout, stderr=out.stderr[-1500:],
          driver=gpio.driver, state=state())


run_steps([modules, uio_refused, assign_release, kill9, late_failure_rolls_back])
