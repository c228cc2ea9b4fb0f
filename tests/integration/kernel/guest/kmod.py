"""Scenario ``kmod`` (kernel_harness.kmod_dtb): the project's platpass_vfio module.

Debian's own vfio.ko and vfio_iommu_type1.ko are loaded (no no-IOMMU mode in them), then
vfio-platform-base and platpass_vfio. The PL061 (platform device) and the PL031 (AMBA,
taken from rtc-pl031) are bound to it and driven through :class:`VfioKernelBackend`: an
emulated IOMMU group (``/dev/vfio/N``, type1 container), no TAINT_USER, no CAP_SYS_RAWIO
needed, DMA maps recorded and never pinned, the PL061 interrupt through the kernel's
eventfd. ``uart@9030000`` is the PL011 entry over the PL061's registers (see kmod_dtb) and
checks the DMACR filter; ``rtc@9010000`` (dma-coherent) and a virtio-mmio transport (no
entry) are refused.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import struct
import subprocess
import time

from kcheck import check, counted_seconds, host, run_steps

from platpass.host.sysfs import SysfsDevice
from platpass.host.vfio_kernel.backend import VfioKernelBackend
from platpass.host.vfio_kernel.syscalls import KernelCallError
from platpass.reactor import EpollReactor

PLATFORM, AMBA = "platpass-vfio-platform", "platpass-vfio-amba"
RTC = SysfsDevice("amba", "9010000.pl031")
GPIO = SysfsDevice("platform", "9030000.pl061")
UART = SysfsDevice("platform", "9030000.uart")          # the PL011 entry's stand-in
DMA_RTC = SysfsDevice("platform", "9010000.rtc")       # arm,pl031 + dma-coherent
VIRTIO = SysfsDevice("platform", "a000000.virtio_mmio")
IDS = {"pl031": [0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1],
       "pl061": [0x61, 0x10, 0x04, 0x00, 0x0D, 0xF0, 0x05, 0xB1]}
GPIODATA, GPIODIR, GPIOIS, GPIOIBE, GPIOIEV, GPIOIE, GPIOMIS, GPIOIC = (
    0x3FC, 0x400, 0x404, 0x408, 0x40C, 0x410, 0x418, 0x41C)
UARTDMACR = 0x48          # on the stand-in: GPIODATA masked by bits 1 and 4
MAP_DMA, UNMAP_DMA = 0x3B71, 0x3B72
TAINT_USER = 64
STATE: dict = {}


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def taint() -> int:
    with open("/proc/sys/kernel/tainted") as f:
        return int(f.read())


def dmesg(pattern: str) -> str:
    return sh(f"dmesg | grep -e '{pattern}' | tail -4")


def insmod(path: str) -> int:
    return subprocess.run(["insmod", path], capture_output=True).returncode


def ids(b: VfioKernelBackend) -> list[int]:
    return [b.read(0, 0xFE0 + 4 * i, 4) & 0xFF for i in range(8)]


def load() -> None:
    STATE["boot"] = taint()
    rcs = {m: insmod(f"/lib/modules/debian/{m}.ko")
           for m in ("vfio_virqfd", "vfio", "vfio_iommu_type1")}
    STATE["debian"] = taint()
    rcs |= {m: insmod(f"/lib/modules/kmod/{m}.ko")
            for m in ("vfio-platform-base", "platpass_vfio")}
    STATE["loaded"] = taint()
    drivers = [os.path.isdir(f"/sys/bus/{bus}/drivers/{name}")
               for bus, name in (("platform", PLATFORM), ("amba", AMBA))]
    check("kmod.loaded", not any(rcs.values()) and all(drivers)
          and RTC.driver == "rtc-pl031" and GPIO.driver is None,
          insmod=rcs, drivers=drivers, taint=dict(STATE), rtc=RTC.driver, gpio=GPIO.driver)


def bind() -> None:
    GPIO.set_driver_override(PLATFORM)
    GPIO.bind(PLATFORM)
    RTC.set_driver_override(AMBA)
    RTC.unbind()
    RTC.bind(AMBA)
    nodes = sorted(os.listdir("/dev/vfio"))
    check("kmod.bound", GPIO.driver == PLATFORM and RTC.driver == AMBA
          and len(nodes) == 3 and not any(n.startswith("noiommu") for n in nodes),
          gpio=GPIO.driver, rtc=RTC.driver, dev_vfio=nodes,
          dmesg=dmesg("platpass\\|emulated"))
    check("kmod.no_taint_user", not taint() & TAINT_USER, taint=taint(), states=STATE)


def refusals() -> None:
    for name, device, reason in (("dma_coherent", DMA_RTC, 'has "dma-coherent"'),
                                 ("unknown_compatible", VIRTIO, "no entry for")):
        device.set_driver_override(PLATFORM)
        error = None
        try:
            device.bind(PLATFORM)
        except Exception as err:  # the kernel's errno, wrapped
            error = str(err)
        device.set_driver_override(None)
        log = dmesg(device.name)
        check(f"kmod.refuses_{name}", error is not None and device.driver is None
              and reason in log, error=error, driver=device.driver, dmesg=log)


def pl031_amba() -> None:
    b = VfioKernelBackend(RTC.name, bus="amba")
    try:
        check("kmod.pl031.emulated_iommu", not b.noiommu and b.iommu.name == "TYPE1v2",
              iommu=b.iommu.name, noiommu=b.noiommu)
        check("kmod.pl031.info", int(b.info.flags) == 0x9 and b.irq_count == 1
              and int(b.region_infos[0].flags) == 0x7,
              info=repr(b.info), region=repr(b.region_infos[0]), irq=repr(b.irq_infos))
        check("kmod.pl031.ids", ids(b) == IDS["pl031"], ids=ids(b))
        t0, m0 = b.read(0, 0, 4), time.monotonic()
        time.sleep(1.2)
        t1, elapsed = b.read(0, 0, 4), time.monotonic() - m0
        check("kmod.pl031.counter_moves", counted_seconds(t0, t1, elapsed), t0=t0, t1=t1,
              elapsed=round(elapsed, 3))
        size = 64 << 20
        buf = mmap.mmap(-1, size)
        vaddr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        before = sh("grep -e VmLck -e VmPin /proc/self/status | tr -s '\\n\\t ' ' '")
        errors = []
        try:
            fcntl.ioctl(b._container, MAP_DMA, struct.pack("<IIQQQ", 32, 3, vaddr, 1 << 20,
                                                            size))
        except OSError as err:
            errors.append(repr(err))
        during = sh("grep -e VmLck -e VmPin /proc/self/status | tr -s '\\n\\t ' ' '")
        unmap = bytearray(struct.pack("<IIQQ", 24, 0, 1 << 20, size))
        try:
            fcntl.ioctl(b._container, UNMAP_DMA, unmap, True)
        except OSError as err:
            errors.append(repr(err))
        unmapped = struct.unpack("<IIQQ", unmap)[3]
        check("kmod.dma_map_pins_nothing", not errors and unmapped == size
              and "VmPin: 0 kB" in during and "VmLck: 0 kB" in during, errors=errors,
              before=before, during_map=during, unmapped=unmapped)
        b.reset()
        check("kmod.pl031.reset", b.read(0, 0x10, 4) == 0, imsc=b.read(0, 0x10, 4))
    finally:
        b.close()


def pl061_irq() -> None:
    b = VfioKernelBackend(GPIO.name)
    reactor = EpollReactor()
    fired: list[int] = []

    class Listener:
        def irq_fired(self, index: int) -> None:
            fired.append(index)

    try:
        check("kmod.pl061.ids", ids(b) == IDS["pl061"] and int(b.info.flags) == 0x5
              and int(b.irq_infos[0].flags) == 0x7, ids=ids(b), info=repr(b.info),
              irq=repr(b.irq_infos))
        b.attach(reactor, Listener())
        bit = 1 << 3                             # gpio-keys: system_powerdown
        b.write(0, GPIODIR, 4, b.read(0, GPIODIR, 4) & ~bit)
        b.write(0, GPIOIS, 4, b.read(0, GPIOIS, 4) & ~bit)
        b.write(0, GPIOIBE, 4, b.read(0, GPIOIBE, 4) & ~bit)
        b.write(0, GPIOIEV, 4, b.read(0, GPIOIEV, 4) | bit)
        b.write(0, GPIOIC, 4, 0xFF)
        b.write(0, GPIOIE, 4, bit)
        b.unmask_irq(0)
        host("system_powerdown")
        first = reactor.run_until(lambda: len(fired) >= 1, 15)
        mis = b.read(0, GPIOMIS, 4)
        reactor.run_until(lambda: False, 0.5)
        held = len(fired) == 1                   # automasked: not acked, no second event
        b.write(0, GPIOIC, 4, bit)
        b.unmask_irq(0)
        reactor.run_until(lambda: False, 0.3)
        quiet = len(fired) == 1
        host("system_powerdown")
        second = reactor.run_until(lambda: len(fired) >= 2, 15)
        check("kmod.pl061.irq_eventfd_automask_unmask",
              first and bool(mis & bit) and held and quiet and second,
              fired=fired, mis=mis, automask_held=held, quiet_after_ack=quiet)
        b.write(0, GPIOIE, 4, 0)
        b.write(0, GPIOIC, 4, 0xFF)
    finally:
        b.close()
        reactor.close()


def without_rawio() -> None:
    """Group and device opened with CAP_SYS_RAWIO dropped (no-IOMMU mode requires it)."""
    code = r"""
import ctypes, struct
libc = ctypes.CDLL(None, use_errno=True)
hdr = ctypes.create_string_buffer(struct.pack('<Ii', 0x20080522, 0), 8)
data = ctypes.create_string_buffer(24)
assert libc.syscall(90, hdr, data) == 0                     # capget
caps = list(struct.unpack('<6I', data.raw))
caps[0] &= ~(1 << 17); caps[1] &= ~(1 << 17)                # CAP_SYS_RAWIO
assert libc.syscall(91, hdr, ctypes.create_string_buffer(struct.pack('<6I', *caps), 24)) == 0
print([l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])
from platpass.host.vfio_kernel.backend import VfioKernelBackend
b = VfioKernelBackend('9010000.pl031', bus='amba')
print([b.read(0, 0xFE0 + 4 * i, 4) & 0xFF for i in range(8)])
b.close()
"""
    r = subprocess.run(["python3", "-c", code], capture_output=True, text=True)
    lines = r.stdout.split("\n")
    check("kmod.works_without_cap_sys_rawio", r.returncode == 0
          and not int(lines[0], 16) & (1 << 17) and lines[1] == str(IDS["pl031"]),
          stdout=r.stdout, stderr=r.stderr[-800:])


def pl011_dmacr() -> None:
    UART.set_driver_override(PLATFORM)
    UART.bind(PLATFORM)
    b = VfioKernelBackend(UART.name)
    try:
        region = b.region_infos[0]
        mapped = None
        try:
            mmap.mmap(b.device_fd, 4096, offset=region.offset)
            mapped = "mapped"
        except OSError as err:
            mapped = errno.errorcode.get(err.errno, str(err.errno))
        check("kmod.pl011.dmacr_page_not_mappable",
              not int(region.flags) & 4 and mapped == "EINVAL",
              flags=int(region.flags), mmap=mapped, dmesg=dmesg(UART.name))
        b.write(0, GPIODIR, 4, 0x12)               # the bits UARTDMACR aliases: outputs
        b.write(0, GPIODATA, 4, 0x12)
        control = b.read(0, GPIODATA, 4) & 0x12    # a plain write reaches both bits
        b.write(0, GPIODATA, 4, 0)
        b.write(0, UARTDMACR, 4, 0x12)             # bit 1 is TXDMAE: cleared by the filter
        filtered = b.read(0, GPIODATA, 4) & 0x12
        short = None
        try:
            b.write(0, UARTDMACR, 2, 0x3)
        except KernelCallError as err:
            short = errno.errorcode.get(err.errno, str(err.errno))
        check("kmod.pl011.dmacr_dma_bits_unwritable",
              control == 0x12 and filtered == 0x10 and short == "EINVAL",
              control=control, after_dmacr_write=filtered, two_byte_write=short)
        b.write(0, GPIODIR, 4, 0)
    finally:
        b.close()
        UART.unbind()
        UART.set_driver_override(None)


def unbind_and_unload() -> None:
    GPIO.unbind()
    GPIO.set_driver_override(None)
    RTC.unbind()
    RTC.set_driver_override(None)
    RTC.bind("rtc-pl031")
    left = sorted(os.listdir("/dev/vfio"))
    r = subprocess.run(["rmmod", "platpass_vfio"], capture_output=True, text=True)
    gone = not os.path.exists(f"/sys/bus/platform/drivers/{PLATFORM}")
    check("kmod.unbind_rmmod_leave_nothing", left == ["vfio"] and r.returncode == 0 and gone
          and RTC.driver == "rtc-pl031" and not taint() & TAINT_USER,
          dev_vfio=left, rmmod=r.returncode, stderr=r.stderr, rtc=RTC.driver, taint=taint(),
          lsmod=sh("cut -d' ' -f1 /proc/modules"))


run_steps([load, bind, refusals, pl031_amba, pl061_irq, without_rawio, pl011_dmacr,
           unbind_and_unload])
