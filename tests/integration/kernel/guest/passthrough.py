"""Scenario ``passthrough`` (platform DTB, the project's module loaded): platpass uses it.

* ``scan --live`` names the backend ``assign`` would use: the module, once it is loaded;
* ``assign`` without ``--backend`` binds the PL031 to ``platpass-vfio-platform`` (recorded
  for ``release``), a vfio-user client reads it through the page the kernel device fd
  maps, ``release`` puts it back;
* ``serve --backend vfio`` on the module-bound PL031: the client's trigger and unmask
  eventfds go to the kernel; its alarm interrupts reach the client while the server's
  control socket reports nothing fired or delivered through it;
* ``bench/irq_kmod.py``: the interrupt path over the module, pass-through, against the
  raw kernel VFIO eventfd and the UIO bridge (figures printed, not asserted).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

from kcheck import check, run_steps

from platpass.host.sysfs import SysfsDevice

RTC = SysfsDevice("platform", "9010000.pl031")
PLATFORM = "platpass-vfio-platform"
IDS_PL031 = [0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
RTC_DR, RTC_MR, RTC_IMSC, RTC_ICR = 0x0, 0x4, 0x10, 0x1C
FORCE: dict[str, list[str]] = {}


def platpass(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "platpass", *args], capture_output=True,
                          text=True, timeout=timeout)


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def modules() -> None:
    for path in ("debian/vfio_virqfd", "debian/vfio", "debian/vfio_iommu_type1",
                 "kmod/vfio-platform-base", "kmod/platpass_vfio", "debian/uio",
                 "platpass/uio_pdrv_genirq"):
        subprocess.run(["insmod", f"/lib/modules/{path}.ko"], check=True)


def scan() -> None:
    out = platpass("scan", "--live", "--json")
    entries = {e["path"]: e for e in json.loads(out.stdout or "[]")}
    for node in ("/pl031@9010000", "/pl061@9030000"):
        entry = entries.get(node, {})
        if not entry.get("verdict", "").startswith("ASSIGNABLE"):
            FORCE[node] = ["--force-unsafe"]   # e.g. the PL061 feeds gpio-keys
    check("passthrough.scan_names_the_module",
          entries.get("/pl031@9010000", {}).get("backend") == f"kmod ({PLATFORM})",
          backends={k: v.get("backend") for k, v in entries.items() if v.get("backend")},
          stderr=out.stderr[-500:])


def assign_auto() -> None:
    from platpass.vfio_user.client import VfioUserClient

    sock = "/run/auto-pl031.sock"
    out = platpass("assign", "/pl031@9010000", "--socket", sock, *FORCE.get("/pl031@9010000",
                                                                             []))
    with open("/run/platpass/assignments.json") as f:
        entry = json.load(f)["devices"].get("9010000.pl031", {})
    check("passthrough.assign_prefers_the_module", out.returncode == 0
          and RTC.driver == PLATFORM and entry.get("backend") == "kmod"
          and entry.get("host_driver") == PLATFORM, rc=out.returncode, stdout=out.stdout,
          stderr=out.stderr[-1500:], driver=RTC.driver, entry=entry)
    client = VfioUserClient.connect(sock)
    region = client.region_info(0)
    mapped = client.map_region(0)
    ids = [mapped.read32(0xFE0 + 4 * i) & 0xFF for i in range(8)] if mapped.areas else None
    check("passthrough.assigned_pl031_mapped_from_kernel_fd", ids == IDS_PL031, ids=ids,
          region=repr(region.info))
    if region.fd is not None:
        os.close(region.fd)
    mapped.close()
    client.close()
    out = platpass("release", "/pl031@9010000")
    check("passthrough.release_restores", out.returncode == 0 and RTC.driver is None
          and RTC.driver_override is None, rc=out.returncode, stderr=out.stderr[-800:],
          driver=RTC.driver)


def serve_passthrough() -> None:
    """The PL031's alarm: MR written with the current count matches at once (QEMU), so
    RIS is set and IMSC raises the level line; ICR clears it."""
    from platpass.ops.control import query
    from platpass.vfio_user.client import VfioUserClient

    RTC.set_driver_override(PLATFORM)
    RTC.bind(PLATFORM)
    sock, control = "/run/rtc.sock", "/run/rtc.ctl"
    server = subprocess.Popen(["python3", "-m", "platpass", "serve", "--backend", "vfio",
                               "/pl031@9010000", "--socket", sock, "--control", control],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if line.strip() == "ready":
                break
        client = VfioUserClient.connect(sock)
        irq = client.irq_info(0)
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        ufd = os.eventfd(0, os.EFD_NONBLOCK)
        client.set_trigger_eventfd(0, efd)
        client.set_unmask_eventfd(0, ufd)
        client.write(0, RTC_ICR, 4, 1)
        client.write(0, RTC_IMSC, 4, 1)
        received, held = 0, []
        for _ in range(3):
            for _attempt in range(3):   # the count may tick between the read and the write
                client.write(0, RTC_MR, 4, client.read(0, RTC_DR, 4))
                if readable(efd, 2):
                    break
            received += os.eventfd_read(efd) if readable(efd, 0) else 0
            held.append(not readable(efd, 0.2))    # automasked by the kernel, not acked
            client.write(0, RTC_ICR, 4, 1)         # the guest acks ...
            os.eventfd_write(ufd, 1)               # ... and its resampler unmasks
            time.sleep(0.1)
        status = query(control)
        line = status["devices"][0]["irqs"][0] if status.get("devices") else {}
        check("passthrough.serve_relays_no_interrupt", received == 3 and all(held)
              and line.get("fired") == 0 and line.get("delivered") == 0
              and line.get("trigger") is True, received=received, automask_held=held,
              irq_info=repr(irq), server_irq_stats=line)
        client.write(0, RTC_IMSC, 4, 0)
        client.write(0, RTC_ICR, 4, 1)
        client.set_unmask_eventfd(0, -1)
        client.set_trigger_eventfd(0, -1)
        for fd in (efd, ufd):
            os.close(fd)
        client.close()
    finally:
        server.terminate()
        rc = server.wait(timeout=60)
        assert server.stderr is not None
        check("passthrough.serve_stops", rc == 0, rc=rc, stderr=server.stderr.read()[-800:])
        RTC.unbind()
        RTC.set_driver_override(None)


def bench() -> None:
    out = subprocess.run(["python3", "/platpass/bench/irq_kmod.py", "--samples", "1000"],
                         capture_output=True, text=True, timeout=400)
    print(out.stdout, out.stderr, flush=True)
    lines = out.stdout.splitlines()
    check("bench.irq_kmod", out.returncode == 0 and any("ratio" in x for x in lines),
          stdout=lines, stderr=out.stderr[-2000:])


run_steps([modules, scan, assign_auto, serve_passthrough, bench])
