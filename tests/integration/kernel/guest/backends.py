"""Scenario ``backends``: platpass's sysfs, UIO and kernel-VFIO layers on the real kernel.

QEMU virt's PL031 (RTC) and PL061 (GPIO, line 3 wired to gpio-keys: the host's
``system_powerdown`` raises it) are platform devices here (the DTB lost "arm,primecell").
"""

from __future__ import annotations

import os
import subprocess
import time

from kcheck import check, counted_seconds, host, run_steps

from platpass.host.sysfs import SysfsDevice, device_for_node
from platpass.host.uio import UioBackend
from platpass.host.vfio_kernel.backend import VfioKernelBackend
from platpass.reactor import EpollReactor

RTC = SysfsDevice("platform", "9010000.pl031")
GPIO = SysfsDevice("platform", "9030000.pl061")
IDS = {"pl031": [0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1],
       "pl061": [0x61, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1]}
PL031_DR = 0x00
GPIODIR, GPIOIS, GPIOIBE, GPIOIEV, GPIOIE, GPIORIS, GPIOMIS, GPIOIC = (
    0x400, 0x404, 0x408, 0x40C, 0x410, 0x414, 0x418, 0x41C)


def insmod(path: str, *params: str) -> None:
    subprocess.run(["insmod", path, *params], check=True)


class Recorder:
    """An IrqListener that remembers what fired."""

    def __init__(self) -> None:
        self.fired: list[int] = []

    def irq_fired(self, index: int) -> None:
        self.fired.append(index)


def ids(backend) -> list[int]:
    return [backend.read(0, 0xFE0 + 4 * i, 4) & 0xFF for i in range(8)]


def arm_gpio3(backend) -> None:
    """PL061 line 3: input, rising edge, cleared, enabled at the device."""
    bit = 1 << 3
    backend.write(0, GPIODIR, 4, backend.read(0, GPIODIR, 4) & ~bit)
    backend.write(0, GPIOIS, 4, backend.read(0, GPIOIS, 4) & ~bit)
    backend.write(0, GPIOIBE, 4, backend.read(0, GPIOIBE, 4) & ~bit)
    backend.write(0, GPIOIEV, 4, backend.read(0, GPIOIEV, 4) | bit)
    backend.write(0, GPIOIC, 4, 0xFF)
    backend.write(0, GPIOIE, 4, backend.read(0, GPIOIE, 4) | bit)


def wait_fired(reactor: EpollReactor, rec: Recorder, n: int, timeout: float) -> bool:
    return reactor.run_until(lambda: len(rec.fired) >= n, timeout)


def irq_semantics(prefix: str, backend) -> None:
    """The automask contract on the PL061 line, through the reactor only."""
    reactor = EpollReactor()
    rec = Recorder()
    backend.attach(reactor, rec)
    arm_gpio3(backend)
    host("system_powerdown")
    t0 = time.monotonic()
    ok = wait_fired(reactor, rec, 1, 15)
    check(f"{prefix}.irq_fires", ok and backend.read(0, GPIOMIS, 4) & 8 != 0,
          fired=rec.fired, seconds=round(time.monotonic() - t0, 3),
          mis=backend.read(0, GPIOMIS, 4))
    # Automasked: not acked at the device and not unmasked -> nothing more arrives.
    reactor.run_until(lambda: False, 0.5)
    check(f"{prefix}.automask_holds", len(rec.fired) == 1, fired=rec.fired)
    # Unmask while still asserted: fires again at once.
    backend.unmask_irq(0)
    ok = wait_fired(reactor, rec, 2, 5)
    check(f"{prefix}.unmask_refires_pending", ok, fired=rec.fired)
    # Ack at the device, unmask; a new edge fires once more.
    backend.write(0, GPIOIC, 4, 8)
    backend.unmask_irq(0)
    reactor.run_until(lambda: False, 0.3)
    before = len(rec.fired)
    host("system_powerdown")
    ok = wait_fired(reactor, rec, before + 1, 15)
    check(f"{prefix}.second_edge_after_ack", ok and before == 2, fired=rec.fired)
    # Explicit mask: an edge while masked is held, delivered on unmask.
    backend.write(0, GPIOIC, 4, 8)
    backend.unmask_irq(0)
    backend.mask_irq(0)
    reactor.run_until(lambda: False, 0.2)
    before = len(rec.fired)
    host("system_powerdown")
    # Wait until the device has latched the edge (the host may be slow), then a little
    # longer: nothing may come through while masked.
    deadline = time.monotonic() + 15
    while not (latched := backend.read(0, GPIORIS, 4) & 8 != 0) and \
            time.monotonic() < deadline:
        reactor.run_until(lambda: False, 0.05)  # the reactor runs, but must stay quiet
    reactor.run_until(lambda: False, 0.5)
    held = latched and len(rec.fired) == before
    backend.unmask_irq(0)
    ok = wait_fired(reactor, rec, before + 1, 5)
    check(f"{prefix}.mask_holds_then_unmask_delivers", held and ok, fired=rec.fired,
          before=before)
    backend.write(0, GPIOIE, 4, 0)
    backend.write(0, GPIOIC, 4, 0xFF)
    backend.unmask_irq(0)
    backend.close()
    check(f"{prefix}.close_unregisters", not any(reactor.watching(fd) for fd in range(64)))
    reactor.close()


def sysfs_lookup() -> None:
    check("sysfs.node_to_device",
          device_for_node("/pl061@9030000") == GPIO and device_for_node("/pl031@9010000") == RTC,
          gpio=str(device_for_node("/pl061@9030000")))
    check("sysfs.of_node", GPIO.of_node == "/pl061@9030000", of_node=GPIO.of_node)
    refused = []
    for bad in ("../../../tmp/x", "9030000.pl061/../x", "/pl061@9030000/../.."):
        try:
            device_for_node(bad)
        except Exception as err:  # HostError expected
            refused.append(type(err).__name__)
    check("sysfs.refuses_traversal", refused == ["HostError"] * 3, refused=refused)
    check("sysfs.unbound_at_boot", GPIO.driver is None and RTC.driver is None,
          gpio=GPIO.driver, rtc=RTC.driver, override=GPIO.driver_override)


def uio() -> None:
    insmod("/lib/modules/debian/uio.ko")
    insmod("/lib/modules/platpass/uio_pdrv_genirq.ko")
    for device in (RTC, GPIO):
        device.set_driver_override("uio_pdrv_genirq")
        device.bind("uio_pdrv_genirq")
    check("uio.bound", RTC.driver == GPIO.driver == "uio_pdrv_genirq",
          rtc=RTC.driver, gpio=GPIO.driver)
    rtc = UioBackend.for_device(RTC.path)
    check("uio.pl031.layout", rtc.irq_count == 1 and rtc.regions[0].size == 0x1000
          and rtc.regions[0].map_source is not None, regions=repr(rtc.regions))
    check("uio.pl031.ids", ids(rtc) == IDS["pl031"], ids=ids(rtc))
    t0, m0 = rtc.read(0, PL031_DR, 4), time.monotonic()
    time.sleep(1.2)
    t1, elapsed = rtc.read(0, PL031_DR, 4), time.monotonic() - m0
    check("uio.pl031.counter_moves", counted_seconds(t0, t1, elapsed), t0=t0, t1=t1,
          elapsed=elapsed)
    rtc.close()
    gpio = UioBackend.for_device(GPIO.path)
    check("uio.pl061.ids", ids(gpio) == IDS["pl061"], ids=ids(gpio))
    irq_semantics("uio.pl061", gpio)


def vfio() -> None:
    insmod("/lib/modules/debian/vfio_virqfd.ko")
    insmod("/lib/modules/platpass/vfio.ko", "enable_unsafe_noiommu_mode=1")
    insmod("/lib/modules/platpass/vfio-platform-base.ko")
    insmod("/lib/modules/platpass/vfio-platform.ko", "reset_required=0")
    for device in (RTC, GPIO):
        device.unbind()
        device.set_driver_override("vfio-platform")
        device.bind("vfio-platform")
    check("vfio.bound", RTC.driver == GPIO.driver == "vfio-platform",
          rtc=RTC.driver, gpio=GPIO.driver, dev=os.listdir("/dev/vfio"))
    rtc = VfioKernelBackend("9010000.pl031")
    check("vfio.pl031.noiommu", rtc.noiommu and rtc.iommu.name == "NOIOMMU",
          iommu=rtc.iommu.name)
    check("vfio.pl031.info", rtc.info.num_regions == 1 and rtc.irq_count == 1
          and int(rtc.info.flags) & 4 != 0 and int(rtc.region_infos[0].flags) & 7 == 7,
          info=repr(rtc.info), region=repr(rtc.region_infos[0]), irq=repr(rtc.irq_infos))
    check("vfio.pl031.ids", ids(rtc) == IDS["pl031"], ids=ids(rtc))
    t0, m0 = rtc.read(0, PL031_DR, 4), time.monotonic()
    time.sleep(1.2)
    t1, elapsed = rtc.read(0, PL031_DR, 4), time.monotonic() - m0
    check("vfio.pl031.counter_moves", counted_seconds(t0, t1, elapsed), t0=t0, t1=t1,
          elapsed=elapsed)
    # the trapped path: pread/pwrite on the device fd at the region offset
    for window in rtc._windows.values():
        window.close()
    rtc._windows.clear()
    check("vfio.pl031.ids_by_pread", ids(rtc) == IDS["pl031"], ids=ids(rtc))
    rtc.close()
    gpio = VfioKernelBackend("9030000.pl061")
    check("vfio.pl061.ids", ids(gpio) == IDS["pl061"], ids=ids(gpio))
    irq_semantics("vfio.pl061", gpio)


def serve_already_bound() -> None:
    """``platpass serve --backend vfio`` on a device already bound to vfio-platform: the
    serve command finds the backend through ``platpass.host.vfio_kernel.open_backend``."""
    from platpass.vfio_user.client import VfioUserClient

    sock = "/run/serve-pl031.sock"
    server = subprocess.Popen(["python3", "-m", "platpass", "serve", "--backend", "vfio",
                               "/pl031@9010000", "--socket", sock],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        ready = False
        for line in server.stdout:
            if line.strip() == "ready":
                ready = True
                break
        client = VfioUserClient.connect(sock)
        rtc_ids = [client.read(0, 0xFE0 + 4 * i, 4) & 0xFF for i in range(8)]
        client.close()
        check("serve.vfio_backend_open_backend", ready and rtc_ids == IDS["pl031"],
              ids=rtc_ids, ready=ready)
    finally:
        server.terminate()
        rc = server.wait(timeout=30)
        check("serve.stops_on_sigterm", rc == 0, rc=rc,
              stderr=server.stderr.read() if server.stderr else "")


run_steps([sysfs_lookup, uio, vfio, serve_already_bound])
