"""Interrupt latency over the project's kernel module: pass-through against raw kernel VFIO
and against the UIO bridge, in one run on one machine.

Run as root with a PL061 platform device that nothing uses (the arm64 test guest, platform
DTB), Debian's vfio + vfio_iommu_type1, vfio-platform-base and platpass_vfio loaded (and
uio_pdrv_genirq for the UIO figure):

    python3 bench/irq_kmod.py [--samples N] [--rounds R]

The PL061 line is raised by the CPU itself, as in ``bench/irq_kernel.py`` (line 0 made
level-sensitive at the level it has, then GPIOIE set: the SPI asserts at once). t0 is taken
before that MMIO store, t1 when the waiter's blocking ``read`` of its eventfd returns.

* **raw kernel VFIO eventfd** (baseline): the device bound to ``platpass-vfio-platform``,
  an eventfd given to ``VFIO_DEVICE_SET_IRQS`` directly, no platpass in the path;
* **platpass pass-through** (``assign``/``serve`` with the module): the client's eventfd
  handed to the kernel by :class:`VfioDevice` (:mod:`platpass.host.vfio_kernel.passthrough`),
  the same SET_IRQS a vfio-user server makes with the fd it received; the kernel signals
  it, no platpass code runs between the store and the wake-up;
* **platpass UIO bridge** (``--backend uio``): uio_pdrv_genirq's handler wakes the server's
  reactor, the VfioDevice automasks and signals the client's eventfd.

Between samples the line is quietened (GPIOIE cleared, GPIOIC written) and unmasked, the
unmask through the same path as the trigger (the kernel ioctl, or the VfioDevice). The raw
and pass-through figures alternate over ``--rounds`` rounds (which goes first alternating
too) so drift hits both alike; the medians are over all their samples. Everything runs in
this process, pinned to ``--cpu`` (default 0; the GIC routes the SPI to CPU 0 unless told
otherwise, see /proc/interrupts); the placement is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from irq_kernel import GPIOIC, GPIOIE, LINE, _arm_level, _on, _us, measure_uio, measure_vfio
from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import load_live
from platpass.firmware.model import DeviceNode
from platpass.host.sysfs import SysfsDevice
from platpass.host.vfio_kernel.backend import VfioKernelBackend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqSetFlags

KMOD_DRIVER = "platpass-vfio-platform"


def measure_passthrough(device: SysfsDevice, samples: int,
                        node: DeviceNode) -> tuple[list[float], int]:
    """Latencies (s) with the client's eventfd passed to the kernel by the VfioDevice, and
    how many interrupts the VfioDevice itself saw (0: nothing relayed)."""
    driver = default_registry().match(node.compatible)
    assert driver is not None, f"no platpass driver for {node.compatible}"
    reactor = EpollReactor()
    backend = VfioKernelBackend(device.name, bus=device.bus)
    vdev = VfioDevice(node, driver(node), backend, reactor)
    efd = os.eventfd(0)
    vdev.set_irqs(0, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 1, fds=(efd,))
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
            vdev.set_irqs(0, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 0, 1)
        relayed = vdev.stats.irqs[0].fired + vdev.stats.irqs[0].delivered
    finally:
        vdev.close()
        os.close(efd)
        reactor.close()
    return out, relayed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="9030000.pl061", help="PL061 platform device")
    parser.add_argument("--samples", type=int, default=600, help="per figure")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--no-uio", action="store_true", help="skip the UIO bridge")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin this process to "
                        "(-1: leave it to the scheduler)")
    args = parser.parse_args(argv)
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    placement = (f"pinned to CPU {args.cpu}" if args.cpu >= 0 else "unpinned") + \
        f" of {os.cpu_count()}"
    device = SysfsDevice("platform", args.device, Path("/sys"))
    if not device.exists():
        print(f"no platform device {args.device}", file=sys.stderr)
        return 2
    per_round = max(1, args.samples // args.rounds)
    raw: list[float] = []
    passed: list[float] = []
    relayed = 0

    node = load_live().node(device.of_node or "")

    def kmod_rounds(dev: SysfsDevice, _samples: int) -> list[float]:
        nonlocal relayed
        for i in range(args.rounds):
            if i % 2:   # the order alternates too: neither figure always goes first
                raw.extend(measure_vfio(dev, per_round))
            got, seen = measure_passthrough(dev, per_round, node)
            passed.extend(got)
            relayed += seen
            if not i % 2:
                raw.extend(measure_vfio(dev, per_round))
        return raw

    _on(device, KMOD_DRIVER, kmod_rounds, 0)
    uio = [] if args.no_uio else _on(device, "uio_pdrv_genirq", measure_uio, args.samples)
    print(f"placement: {placement}; {args.rounds} rounds, raw and pass-through alternating")
    print(f"raw kernel VFIO eventfd (platpass_vfio): {_us(raw)}")
    print(f"platpass pass-through (platpass_vfio)  : {_us(passed)}  relayed by platpass: "
          f"{relayed}")
    ratio = statistics.median(passed) / statistics.median(raw)
    print(f"ratio pass-through / raw kernel VFIO eventfd (median): {ratio:.3f}x  "
          "(target <= 1.05x)")
    if uio:
        print(f"platpass UIO bridge (uio_pdrv_genirq)  : {_us(uio)}")
        print(f"ratio UIO bridge / raw kernel VFIO eventfd (median): "
              f"{statistics.median(uio) / statistics.median(raw):.2f}x")
        print(f"ratio pass-through / UIO bridge (median): "
              f"{statistics.median(passed) / statistics.median(uio):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
