"""Scenario ``assign`` (platform DTB): ``platpass assign``/``release`` end to end.

A vfio-user client in the guest talks to the server ``assign`` started, over both the UIO
and the kernel-VFIO backends: the PL031 counter moves and the PL061 IDs read the same
through the mapped pages and through REGION_READ messages; the PL061 line-3 interrupt
(host: ``system_powerdown``) arrives on the client's eventfd, stays automasked until the
client unmasks. Also: the live scan's verdicts, a refused node, a failed bind that leaves
the device where it was, and ``release`` after ``kill -9`` of the server.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

from kcheck import check, counted_seconds, host, run_steps

from platpass.host.sysfs import SysfsDevice

RTC = SysfsDevice("platform", "9010000.pl031")
GPIO = SysfsDevice("platform", "9030000.pl061")
STATE = "/run/platpass/assignments.json"
#: Extra ``assign`` arguments: --force-unsafe while a node's driver is missing, so the
#: plumbing is still exercised (the scan checks report the verdict on their own).
#: The PL061's line 3 is QEMU virt's power button (gpio-keys): a host consumer, which the
#: scenario waives knowingly (it raises the line through that button).
WAIVE_PL061 = ["--override", "/pl061@9030000=host-consumer,live-consumer"]
FORCE: dict[str, list[str]] = {"/pl031@9010000": [], "/pl061@9030000": WAIVE_PL061}
IDS = {"pl031": [0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1],
       "pl061": [0x61, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1]}
GPIODIR, GPIOIS, GPIOIBE, GPIOIEV, GPIOIE, GPIORIS, GPIOMIS, GPIOIC = (
    0x400, 0x404, 0x408, 0x40C, 0x410, 0x414, 0x418, 0x41C)


RTC_BASE, PL031_MR, PL031_IMSC = 0x9010000, 0x04, 0x10


def devmem(address: int) -> int | None:
    """A 32-bit physical read with busybox devmem (None if it cannot read)."""
    out = subprocess.run(["devmem", hex(address), "32"], capture_output=True, text=True)
    try:
        return int(out.stdout.strip(), 16)
    except ValueError:
        return None


def platpass(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "platpass", *args], capture_output=True,
                          text=True, timeout=timeout)


def state() -> dict:
    try:
        with open(STATE) as f:
            return json.load(f)["devices"]
    except FileNotFoundError:
        return {}


def insmod(path: str, *params: str) -> None:
    subprocess.run(["insmod", path, *params], check=True)


def readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def modules() -> None:
    insmod("/lib/modules/debian/uio.ko")
    insmod("/lib/modules/platpass/uio_pdrv_genirq.ko")
    insmod("/lib/modules/debian/vfio_virqfd.ko")
    insmod("/lib/modules/platpass/vfio.ko", "enable_unsafe_noiommu_mode=1")
    insmod("/lib/modules/platpass/vfio-platform-base.ko")
    # reset_required=1 (the default): vfio-platform refuses devices without a reset
    # handler, which makes a real failing bind for failed_bind_rolls_back.
    insmod("/lib/modules/platpass/vfio-platform.ko")


def scan() -> None:
    out = platpass("scan", "--live", "--json")
    try:
        data = json.loads(out.stdout)
    except ValueError:
        check("scan.live_json", False, rc=out.returncode, stdout=out.stdout[-2000:],
              stderr=out.stderr[-2000:])
        return
    check("scan.live_json", out.returncode == 0, rc=out.returncode)
    text = json.dumps(data)
    verdicts = {}
    for entry in data if isinstance(data, list) else data.get("devices", []):
        path = entry.get("path") or entry.get("node")
        verdicts[path] = entry.get("verdict")
    assignable = ("ASSIGNABLE", "ASSIGNABLE_WITH_TRAPS")
    for node in FORCE:
        if node != "/pl061@9030000" and verdicts.get(node) not in assignable:
            FORCE[node] = ["--force-unsafe"]
    check("scan.pl031_assignable", verdicts.get("/pl031@9010000") in assignable,
          verdict=verdicts.get("/pl031@9010000"))
    pl061 = next((e for e in data if isinstance(e, dict)
                  and e.get("path") == "/pl061@9030000"), {})
    check("scan.pl061_host_in_use", verdicts.get("/pl061@9030000") == "REFUSED_HOST_IN_USE"
          and any("gpio-keys" in r for r in pl061.get("reasons", []))
          and any(c.get("consumer", "").startswith("/gpio-keys")
                  for c in pl061.get("consumers", [])),
          verdict=verdicts.get("/pl061@9030000"), reasons=pl061.get("reasons"))
    waived = platpass("scan", "--live", "--json", *WAIVE_PL061)
    try:
        again = {e["path"]: e["verdict"] for e in json.loads(waived.stdout)}
    except (ValueError, KeyError, TypeError):
        again = {}
    check("scan.pl061_assignable_when_waived", again.get("/pl061@9030000") in assignable
          and "waived by the user" in waived.stderr,
          verdict=again.get("/pl061@9030000"), stderr=waived.stderr[-1500:])
    check("scan.virtio_mmio_refused_bus_master",
          verdicts.get("/virtio_mmio@a000000") == "REFUSED_BUS_MASTER",
          verdict=verdicts.get("/virtio_mmio@a000000"), sample=text[:300])


def refused() -> None:
    out = platpass("assign", "/virtio_mmio@a000000", "--socket", "/run/virtio.sock")
    device = SysfsDevice("platform", "a000000.virtio_mmio")
    check("assign.refused_with_reasons",
          out.returncode == 1 and "REFUSED_BUS_MASTER" in out.stderr
          and "dma-coherent" in out.stderr and device.driver_override is None
          and not os.path.exists("/run/virtio.sock"),
          rc=out.returncode, stderr=out.stderr, driver=device.driver)


def failed_bind_rolls_back() -> None:
    before = (GPIO.driver, GPIO.driver_override)
    out = platpass("assign", "/pl061@9030000", "--backend", "vfio", "--socket",
                   "/run/fail.sock", *FORCE["/pl061@9030000"])
    after = (GPIO.driver, GPIO.driver_override)
    check("assign.failed_bind_leaves_device", out.returncode == 1 and after == before
          and "9030000.pl061" not in state() and "binding" in out.stderr,
          rc=out.returncode, stderr=out.stderr, before=before, after=after, state=state())
    # now the working vfio-platform for the rest of the boot
    subprocess.run(["rmmod", "vfio-platform"], check=True)
    insmod("/lib/modules/platpass/vfio-platform.ko", "reset_required=0")


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict (empty when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except OSError:
        return {}


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit()
            and proc_status(int(p)).get("PPid") == str(pid)]


#: The PL031 is served unprivileged (the ops layer's ``up`` with a service user): a child
#: of the recorded root process drops to nobody and serves; only root may connect.
UNPRIVILEGED = ["--user", "65534:65534", "--allow-uid", "0"]


def serve_and_check(backend: str) -> None:
    from platpass.ops.control import query
    from platpass.vfio_user.client import VfioUserClient

    prefix = f"e2e.{backend}"
    socks = {"pl031": f"/run/{backend}-pl031.sock", "pl061": f"/run/{backend}-pl061.sock"}
    control = f"/run/{backend}-pl031.ctl"
    for name, node in (("pl031", "/pl031@9010000"), ("pl061", "/pl061@9030000")):
        extra = [*UNPRIVILEGED, "--control", control] if name == "pl031" else []
        out = platpass("assign", node, "--backend", backend, "--socket", socks[name],
                       *FORCE[node], *extra)
        check(f"{prefix}.{name}.assigned", out.returncode == 0 and os.path.exists(socks[name]),
              rc=out.returncode, stdout=out.stdout, stderr=out.stderr)
    host_driver = "uio_pdrv_genirq" if backend == "uio" else "vfio-platform"
    if backend == "uio":
        again = platpass("assign", "/pl031@9010000", "--backend", "vfio", "--socket",
                         "/run/again.sock", *FORCE["/pl031@9010000"])
        check("assign.twice_refused", again.returncode == 1
              and "already assigned" in again.stderr and RTC.driver == host_driver,
              rc=again.returncode, stderr=again.stderr, driver=RTC.driver)
    entries = state()
    check(f"{prefix}.bound_and_recorded", RTC.driver == GPIO.driver == host_driver
          and set(entries) == {"9010000.pl031", "9030000.pl061"}
          and all(e["original_driver"] is None for e in entries.values()),
          rtc=RTC.driver, gpio=GPIO.driver, state=entries)

    # PL031 served by an unprivileged child of the recorded (root) process
    monitor = entries.get("9010000.pl031", {}).get("pid")
    kids = children(monitor) if monitor else []
    served_by = proc_status(kids[0]) if len(kids) == 1 else {}
    check(f"{prefix}.pl031.unprivileged", len(kids) == 1
          and served_by.get("Uid", "").split() == ["65534"] * 4
          and served_by.get("Gid", "").split() == ["65534"] * 4
          and int(served_by.get("CapEff", "1"), 16) == 0
          and served_by.get("NoNewPrivs") == "1"
          and proc_status(monitor).get("Uid", "").split()[:1] == ["0"],
          monitor=monitor, children=kids, status=served_by)
    try:
        status = query(control)
    except Exception as err:  # reported as the check's evidence
        status = {"error": repr(err)}
    check(f"{prefix}.pl031.control", kids and status.get("pid") == kids[0]
          and [d.get("name") for d in status.get("devices", [])] == ["/pl031@9010000"],
          status=status)

    # PL031: the counter through the mapped page and through messages
    client = VfioUserClient.connect(socks["pl031"])
    info = client.device_info()
    region = client.region_info(0)
    mapped = client.map_region(0)
    ids_mapped = [mapped.read32(0xFE0 + 4 * i) & 0xFF for i in range(8)] \
        if mapped.areas else None
    ids_msg = [client.read(0, 0xFE0 + 4 * i, 4) & 0xFF for i in range(8)]
    t0, m0 = client.read(0, 0, 4), time.monotonic()
    time.sleep(1.2)
    t1 = mapped.read32(0) if mapped.areas and mapped.areas[0].contains(0, 4) \
        else client.read(0, 0, 4)
    elapsed = time.monotonic() - m0
    check(f"{prefix}.pl031.ids_mapped_and_trapped", ids_msg == IDS["pl031"]
          and ids_mapped == IDS["pl031"], mapped=ids_mapped, messages=ids_msg,
          info=repr(info), region=repr(region.info), mappable=region.mappable)
    if region.fd is not None:
        os.close(region.fd)  # a leaked VFIO device fd would block the unbind at release
    check(f"{prefix}.pl031.counter_moves", counted_seconds(t0, t1, elapsed), t0=t0, t1=t1,
          elapsed=elapsed)
    mapped.close()
    client.close()

    # PL061: IDs both ways, interrupt on the client's eventfd, automask, unmask
    client = VfioUserClient.connect(socks["pl061"])
    region = client.region_info(0)
    mapped = client.map_region(0)
    ids_mapped = [mapped.read32(0xFE0 + 4 * i) & 0xFF for i in range(8)] \
        if mapped.areas else None
    ids_msg = [client.read(0, 0xFE0 + 4 * i, 4) & 0xFF for i in range(8)]
    # arm-pl061 traps GPIOAFSEL, so its only page is never mapped: messages only.
    check(f"{prefix}.pl061.ids_trapped", ids_msg == IDS["pl061"]
          and ids_mapped in (None, IDS["pl061"]), mapped=ids_mapped, messages=ids_msg,
          region=repr(region.info))
    if region.fd is not None:
        os.close(region.fd)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    client.set_trigger_eventfd(0, efd)

    def rw(off: int, set_bits: int = 0, clear_bits: int = 0) -> None:
        client.write(0, off, 4, (client.read(0, off, 4) | set_bits) & ~clear_bits)

    rw(GPIODIR, clear_bits=8)
    rw(GPIOIS, clear_bits=8)
    rw(GPIOIBE, clear_bits=8)
    rw(GPIOIEV, set_bits=8)
    client.write(0, GPIOIC, 4, 0xFF)
    rw(GPIOIE, set_bits=8)
    host("system_powerdown")
    t = time.monotonic()
    got = readable(efd, 15)
    latency = time.monotonic() - t
    check(f"{prefix}.pl061.irq_on_client_eventfd",
          got and client.read(0, GPIOMIS, 4) & 8 != 0,
          seconds=round(latency, 3), mis=client.read(0, GPIOMIS, 4))
    if got:
        os.eventfd_read(efd)
    time.sleep(0.5)  # still asserted, not unmasked: nothing more
    quiet = not readable(efd, 0)
    client.unmask(0)  # still asserted: fires again
    check(f"{prefix}.pl061.automask_then_unmask", quiet and readable(efd, 5), quiet=quiet)
    if readable(efd, 0):
        os.eventfd_read(efd)
    client.write(0, GPIOIC, 4, 8)
    client.unmask(0)
    time.sleep(0.3)
    host("system_powerdown")
    check(f"{prefix}.pl061.next_edge_after_ack", readable(efd, 15))
    # The unmask eventfd (a KVM resampler's role): signalling it unmasks the line, which is
    # still asserted (not acked), so the interrupt comes straight back.
    if readable(efd, 0):
        os.eventfd_read(efd)
    ufd = os.eventfd(0, os.EFD_NONBLOCK)
    client.set_unmask_eventfd(0, ufd)
    quiet = not readable(efd, 0.3)
    os.eventfd_write(ufd, 1)
    check(f"{prefix}.pl061.unmask_eventfd_refires", quiet and readable(efd, 5), quiet=quiet)
    client.set_unmask_eventfd(0, -1)
    os.close(ufd)
    client.write(0, GPIOIE, 4, 0)
    client.write(0, GPIOIC, 4, 0xFF)
    client.unmask(0)
    client.set_trigger_eventfd(0, -1)
    os.close(efd)
    mapped.close()
    client.close()

    for node in ("/pl031@9010000", "/pl061@9030000"):
        out = platpass("release", node)
        check(f"{prefix}.release{node.split('@')[0].replace('/', '.')}", out.returncode == 0,
              rc=out.returncode, stdout=out.stdout, stderr=out.stderr)
    check(f"{prefix}.restored", RTC.driver is None and GPIO.driver is None
          and RTC.driver_override is None and GPIO.driver_override is None and not state()
          and not any(os.path.exists(p) for p in (*socks.values(), control))
          and not (kids and os.path.exists(f"/proc/{kids[0]}")),
          rtc=RTC.driver, gpio=GPIO.driver, state=state(),
          left=[p for p in (*socks.values(), control) if os.path.exists(p)])


def uio() -> None:
    serve_and_check("uio")


def vfio() -> None:
    serve_and_check("vfio")


def release_after_kill9() -> None:
    """The recorded (root) process is SIGKILLed: its unprivileged serving child stops too
    (parent-death signal), and ``release`` resets and restores the device."""
    out = platpass("assign", "/pl031@9010000", "--backend", "uio", "--socket", "/run/k.sock",
                   *FORCE["/pl031@9010000"], *UNPRIVILEGED)
    pid = state().get("9010000.pl031", {}).get("pid")
    check("kill9.assigned", out.returncode == 0 and pid and RTC.driver == "uio_pdrv_genirq",
          rc=out.returncode, stderr=out.stderr, pid=pid)
    if not pid:
        return
    # Leave the RTC with its alarm interrupt enabled, as a guest might; a client going away
    # keeps device state, and the killed server cannot reset it.
    from platpass.vfio_user.client import VfioUserClient

    client = VfioUserClient.connect("/run/k.sock")
    client.write(0, PL031_MR, 4, client.read(0, 0, 4) + 100_000)
    client.write(0, PL031_IMSC, 4, 1)
    client.close()
    kids = children(pid)
    os.kill(pid, signal.SIGKILL)

    def running(kid: int) -> bool:  # an exited orphan may stay a zombie until init reaps
        return proc_status(kid).get("State", "Z").split()[0] not in ("Z", "X")

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(running(k) for k in kids):
        time.sleep(0.1)
    check("kill9.unprivileged_child_stops", len(kids) == 1 and not running(kids[0]),
          children=kids)
    time.sleep(0.3)
    still = RTC.driver
    before = devmem(RTC_BASE + PL031_IMSC)
    out = platpass("release", "/pl031@9010000")
    after = devmem(RTC_BASE + PL031_IMSC), devmem(RTC_BASE + PL031_MR)
    check("kill9.release_restores", out.returncode == 0 and still == "uio_pdrv_genirq"
          and RTC.driver is None and RTC.driver_override is None and not state()
          and not os.path.exists("/run/k.sock"),
          rc=out.returncode, stdout=out.stdout, stderr=out.stderr, driver=RTC.driver,
          state=state())
    check("kill9.release_resets_through_driver", before == 1 and after == (0, 0),
          imsc_before=before, imsc_mr_after=after)


def foreground_sigint() -> None:
    """``assign --foreground`` serves in the calling process; Ctrl-C (SIGINT) stops it,
    and it resets and restores the device itself before exiting 0."""
    proc = subprocess.Popen(["python3", "-m", "platpass", "assign", "/pl061@9030000",
                             "--foreground", "--socket", "/run/fg.sock",
                             *FORCE["/pl061@9030000"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    serving = False
    for line in proc.stdout:
        if line.startswith("serving"):
            serving = True
            break
    entry = state().get("9030000.pl061", {})
    bound = GPIO.driver
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=30)
    check("assign.foreground_sigint_restores", serving and entry.get("pid") == proc.pid
          and bound == "uio_pdrv_genirq" and rc == 0 and GPIO.driver is None
          and GPIO.driver_override is None and not state()
          and not os.path.exists("/run/fg.sock"),
          serving=serving, entry=entry, bound=bound, rc=rc, driver=GPIO.driver,
          stderr=proc.stderr.read() if proc.stderr else "")


run_steps([modules, scan, refused, failed_bind_rolls_back, uio, vfio, release_after_kill9,
           foreground_sigint])
