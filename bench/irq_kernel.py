"""Interrupt latency on the real kernel: platpass's UIO bridge against kernel VFIO's eventfd.

Run as ``python3 bench/irq.py --backend uio`` (or this file) as root on a machine with a
PL061 platform device that nothing else uses (the arm64 test guest: QEMU virt with
``arm,primecell`` dropped), uio_pdrv_genirq and vfio-platform (``reset_required=0``,
no-IOMMU or an IOMMU) loaded.

The interrupt is raised by the CPU itself: PL061 line 0 is made level-sensitive with the
level it already has, so setting its GPIOIE bit asserts the SPI at once. One sample:

* t0, then the MMIO store that sets GPIOIE bit 0;
* **UIO bridge** (what ``platpass assign --backend uio`` runs): the kernel's
  uio_pdrv_genirq handler disables the line and wakes the UIO fd; the reactor reads the
  count, :class:`UioBackend` reports it, the :class:`VfioDevice` automasks and signals the
  client's trigger eventfd; t1 when that eventfd has been read;
* **kernel VFIO** (baseline): vfio-platform's handler automasks and signals our eventfd;
  t1 when a blocking read of it returns;
* **platpass over kernel VFIO, relayed** (``VfioKernelBackend(passthrough=False)``; what
  ``assign --backend vfio`` ran before interrupts were passed through, see
  ``bench/irq_kmod.py``): the same kernel eventfd read by the reactor, relayed by the
  VfioDevice to the client's eventfd;
* **bare Python UIO relay** (the floor of any relay written in Python): epoll on the UIO
  fd, the 4-byte read, an eventfd write and read, nothing else.

Between samples the line is quietened (GPIOIE cleared, GPIOIC written) and unmasked, as a
guest would. Both paths run in one process on the same CPU, so the difference is the
bridge: one epoll wake-up, a 4-byte read, the device's IRQ logic and one eventfd write.
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import load_live
from platpass.host import binding
from platpass.host.sysfs import SysfsDevice
from platpass.host.uio import UioBackend
from platpass.host.vfio_kernel.backend import VfioKernelBackend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqSetFlags

GPIOIS, GPIOIBE, GPIOIEV, GPIOIE, GPIOIC, GPIODIR = 0x404, 0x408, 0x40C, 0x410, 0x41C, 0x400
LINE = 1 << 0


def _arm_level(write: Callable[[int, int, int, int], None],
               read: Callable[[int, int, int], int]) -> None:
    """Line 0: input, level-sensitive, active at the level it has now; not yet enabled."""
    write(0, GPIOIE, 4, 0)
    write(0, GPIODIR, 4, read(0, GPIODIR, 4) & ~LINE)
    write(0, GPIOIS, 4, read(0, GPIOIS, 4) | LINE)
    data = read(0, 0x3FC, 4) & LINE
    write(0, GPIOIEV, 4, (read(0, GPIOIEV, 4) & ~LINE) | data)
    write(0, GPIOIC, 4, 0xFF)


def measure_uio(device: SysfsDevice, samples: int) -> list[float]:
    """Latencies (s) of the UIO bridge up to the client's trigger eventfd."""
    return _measure_device(device, samples, "uio")


def measure_vfio_device(device: SysfsDevice, samples: int) -> list[float]:
    """Latencies (s) of platpass's VfioDevice relaying the kernel VFIO backend's
    interrupts: kernel eventfd -> reactor -> client eventfd."""
    return _measure_device(device, samples, "vfio")


def _measure_device(device: SysfsDevice, samples: int, kind: str) -> list[float]:
    tree = load_live()
    node = tree.node(device.of_node or "")
    driver = default_registry().match(node.compatible)
    assert driver is not None, f"no platpass driver for {node.compatible}"
    reactor = EpollReactor()
    backend: UioBackend | VfioKernelBackend
    if kind == "uio":
        backend = UioBackend.for_device(
            device.path, level_triggered=[i.trigger.is_level for i in node.interrupts])
    else:
        backend = VfioKernelBackend(device.name, bus=device.bus, passthrough=False)
    vdev = VfioDevice(node, driver(node), backend, reactor)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    vdev.set_irqs(0, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 1, fds=(efd,))
    _arm_level(backend.write, backend.read)
    out = []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            backend.write(0, GPIOIE, 4, LINE)
            while True:
                reactor.run_once(2.0)
                try:
                    os.eventfd_read(efd)
                    break
                except BlockingIOError:
                    continue
            out.append(time.perf_counter() - t0)
            backend.write(0, GPIOIE, 4, 0)
            backend.write(0, GPIOIC, 4, LINE)
            vdev.set_irqs(0, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 0, 1)
    finally:
        vdev.close()
        os.close(efd)
        reactor.close()
    return out


def measure_uio_floor(device: SysfsDevice, samples: int) -> list[float]:
    """Latencies (s) of the least any Python UIO relay does: epoll wake-up, 4-byte read,
    eventfd write, eventfd read; no reactor, no VFIO device logic."""
    backend = UioBackend.for_device(device.path)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    poller = select.epoll()
    poller.register(backend.fd, select.EPOLLIN)
    _arm_level(backend.write, backend.read)
    on = (1).to_bytes(4, sys.byteorder)
    out = []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            backend.write(0, GPIOIE, 4, LINE)
            poller.poll(2.0)
            os.read(backend.fd, 4)
            os.eventfd_write(efd, 1)
            os.eventfd_read(efd)
            out.append(time.perf_counter() - t0)
            backend.write(0, GPIOIE, 4, 0)
            backend.write(0, GPIOIC, 4, LINE)
            os.write(backend.fd, on)
    finally:
        poller.close()
        backend.close()
        os.close(efd)
    return out


def measure_vfio(device: SysfsDevice, samples: int) -> list[float]:
    """Latencies (s) of vfio-platform's own eventfd (blocking read)."""
    backend = VfioKernelBackend(device.name, bus=device.bus)
    efd = os.eventfd(0)
    backend._set_irqs(IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, fds=(efd,))
    _arm_level(backend.write, backend.read)
    out = []
    try:
        for _ in range(samples):
            t0 = time.perf_counter()
            backend.write(0, GPIOIE, 4, LINE)
            os.eventfd_read(efd)
            out.append(time.perf_counter() - t0)
            backend.write(0, GPIOIE, 4, 0)
            backend.write(0, GPIOIC, 4, LINE)
            backend.unmask_irq(0)
    finally:
        backend.close()
        os.close(efd)
    return out


def _on(device: SysfsDevice, driver: str, run: Callable[[SysfsDevice, int], list[float]],
        samples: int) -> list[float]:
    original, override = binding.bind_device(device, driver)
    try:
        return run(device, samples)
    finally:
        binding.restore_device(device, original, override)


def _us(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(len(values) * 0.9)]
    return (f"median {statistics.median(values) * 1e6:8.1f} us  p90 {p90 * 1e6:8.1f} us  "
            f"(n={len(values)})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("uio", "vfio"), default="uio",
                        help="the figure to report; the other one is the baseline")
    parser.add_argument("--device", default="9030000.pl061", help="PL061 platform device")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args(argv)
    device = SysfsDevice("platform", args.device, Path("/sys"))
    if not device.exists():
        print(f"no platform device {args.device}", file=sys.stderr)
        return 2
    uio = _on(device, "uio_pdrv_genirq", measure_uio, args.samples)
    floor = _on(device, "uio_pdrv_genirq", measure_uio_floor, args.samples)
    vfio = _on(device, "vfio-platform", measure_vfio, args.samples)
    relayed = _on(device, "vfio-platform", measure_vfio_device, args.samples)
    ratio = statistics.median(uio) / statistics.median(vfio)
    ratio_relayed = statistics.median(uio) / statistics.median(relayed)
    print(f"kernel VFIO eventfd (baseline): {_us(vfio)}")
    print(f"platpass relay of kernel VFIO : {_us(relayed)}")
    print(f"bare Python UIO relay (floor) : {_us(floor)}")
    print(f"platpass UIO bridge           : {_us(uio)}")
    print(f"ratio UIO bridge / kernel VFIO eventfd (median): {ratio:.2f}x  (target <= 1.5x)")
    print(f"ratio UIO bridge / platpass relay of kernel VFIO (median): {ratio_relayed:.2f}x")
    print(f"ratio bare Python UIO relay / kernel VFIO eventfd (median): "
          f"{statistics.median(floor) / statistics.median(vfio):.2f}x")
    if args.backend == "vfio":
        print("(--backend vfio: the kernel VFIO figure is the one measured for platpass)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
