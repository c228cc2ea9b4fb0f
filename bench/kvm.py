"""What a KVM guest pays to use a platpass device, beside in-process baselines of the same run.

1. Trapped register read, as the guest sees it (guest TSC cycles around a loop of loads,
   divided by the loop count): guest load -> KVM_EXIT_MMIO -> this VMM -> vfio-user
   REGION_READ -> ``platpass serve`` (another process) -> simulated PL011 ``UARTFR`` ->
   back (the PL011's page holds FIFO registers, so it is trapped).
   Baseline: the same guest loop on an address whose exit this VMM answers itself (a raw
   KVM exit handled in Python, no device). Also shown: the simulated PL031's ``RTCDR``,
   whose page the device offers whole, read through its KVM memory slot (no exit), beside
   a plain memfd slot of this process.
   Trapped register write, as the guest sees it (same loop, stores to the PL011's
   ``UARTDMACR``, which the driver traps): posted (REGION_WRITE with the no-reply flag,
   the KVM client's default: the vCPU resumes once the message is sent) and replied
   (``posted_writes=False``), beside the raw KVM exit of a store answered in-process.
2. Interrupt delivery, device -> guest ISR: the device signals its trigger eventfd (a
   vfio-user loopback trigger, DATA_NONE|ACTION_TRIGGER, sent by this process while the
   vCPU waits in ``hlt``), KVM's irqfd injects GSI n, the guest ISR's first instruction
   writes a port (an exit this VMM timestamps). Baseline: this process writes the irqfd's
   eventfd itself (no device, no vfio-user). Host-side wall clock, one interrupt at a time.

The server process and this process are pinned with ``os.sched_setaffinity``; the vCPU
thread inherits this process' CPU. Placement is printed. Each guest access figure and its
baseline are measured in alternation, ``--rounds`` times, and the best round of each is
kept (as ``bench/mmio.py`` does): a shared machine's hiccup in one round then moves
neither a figure nor its ratio.

    python3 bench/kvm.py [--reads N] [--rounds N] [--irqs N] [--server-cpu C] [--vmm-cpu C]
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import svgplot
from platpass.vmm.client import attach_socket
from platpass.vmm.guest_programs import BootInfo, load_program
from platpass.vmm.kvm import Vm, kvm_unavailable_reason
from platpass.vmm.kvm_uapi import Exit

RTC_NODE = "/soc@9000000/rtc@20000"
UART_NODE = "/soc@9000000/serial@0"
UARTFR = 0x18
UARTDMACR = 0x48
DEVICE_BASE = 0xD000_0000
UART_BASE = 0xD010_0000
RAW_BASE = 0xE000_0000
SLOT_BASE = 0xE010_0000


class Constant:
    """The raw-exit baseline: answers every MMIO read with a constant, in Python."""

    def mmio_read(self, address: int, size: int) -> int:
        return 0x1234

    def mmio_write(self, address: int, size: int, value: int) -> None:
        pass


def start_server(socket_dir: Path, cpu: int) -> subprocess.Popen[str]:
    """``platpass serve`` of the PL031 and the PL011, one socket each in ``socket_dir``."""
    cmd = ["taskset", "-c", str(cpu), sys.executable, "-m", "platpass", "serve", "--sim",
           RTC_NODE, UART_NODE, "--socket-dir", str(socket_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise SystemExit(f"platpass serve did not start: {proc.wait()}")


def guest_read_cost(vm: Vm, address: int, count: int, program: str = "mmio_read"
                    ) -> tuple[float, int]:
    """(guest-visible ns per access, MMIO exits taken) for ``count`` loads of ``address``
    (``program="mmio_write"``: stores)."""
    ports = load_program(vm, program, BootInfo(read_address=address, count=count),
                         getattr(vm, "bench_ports", None))
    vm.bench_ports = ports  # type: ignore[attr-defined]
    before = vm.exits.snapshot()
    vm.vcpus[0].run(timeout=60)
    cycles = ports.reports[1]
    khz = vm.vcpus[0].tsc_khz()
    return cycles / khz * 1e6 / count, vm.exits.since(before).by_reason[Exit.MMIO]


def irq_latencies(vm: Vm, gsi: int, raise_once: object, count: int) -> list[float]:
    """Host-side µs from raising the interrupt to the guest ISR's first exit."""
    arrived = threading.Event()
    stamps: list[int] = []

    def on_report(value: int) -> None:
        stamps.append(time.perf_counter_ns())
        arrived.set()

    ports = load_program(vm, "irq_loop", BootInfo(gsi=gsi, level=True, count=count),
                         getattr(vm, "bench_ports", None))
    vm.bench_ports = ports  # type: ignore[attr-defined]
    ports.on_report = on_report
    errors: list[BaseException] = []

    def vcpu() -> None:
        try:
            vm.vcpus[0].run(timeout=120)
        except BaseException as err:
            errors.append(err)
            arrived.set()

    thread = threading.Thread(target=vcpu)
    thread.start()
    arrived.wait(10)  # the "ready" report
    latencies = []
    for _ in range(count):
        arrived.clear()
        t0 = time.perf_counter_ns()
        raise_once()  # type: ignore[operator]
        if not arrived.wait(5):
            raise SystemExit("an interrupt never reached the guest ISR")
        latencies.append((stamps[-1] - t0) / 1000)
        time.sleep(0.0005)  # let the ISR finish its EOI and go back to hlt
    thread.join(10)
    ports.on_report = None
    if errors:
        raise errors[0]
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate each guest access figure with its baseline this "
                             "many times and keep the best of each (default 3)")
    parser.add_argument("--irqs", type=int, default=300)
    parser.add_argument("--vmm-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, action="append",
                        help="CPU(s) for platpass serve (default: the VMM's, then the other)")
    parser.add_argument("--plot", metavar="FILE.svg",
                        help="also draw the figures: interrupt-delivery CDFs against the raw "
                             "irqfd baseline, and the guest-visible access costs, per placement")
    args = parser.parse_args()
    reason = kvm_unavailable_reason()
    if reason:
        print(f"bench/kvm.py: no KVM here: {reason}")
        return 1
    os.sched_setaffinity(0, {args.vmm_cpu})
    pvm = Path("/sys/module/kvm_pvm").exists()
    cpus = args.server_cpu or [args.vmm_cpu, 1 - args.vmm_cpu if args.vmm_cpu < 2 else 0]
    print(f"host KVM: {'PVM (kvm_pvm)' if pvm else 'hardware KVM'}; "
          f"{os.cpu_count()} CPUs")
    panels: list[svgplot.Panel] = []
    costs: dict[str, list[float]] = {}
    groups: list[str] = []
    for server_cpu in cpus:
        print()
        print(f"=== CPU placement: VMM (vCPU thread) on CPU {args.vmm_cpu}, "
              f"platpass serve on CPU {server_cpu} ===")
        figures = measure(args, server_cpu)
        where = "same CPU" if server_cpu == args.vmm_cpu else "server on other CPU"
        groups.append(where)
        raw, dev = figures.pop("irq raw"), figures.pop("irq device")
        panels.append(svgplot.cdf(
            f"Interrupt to guest ISR, {where}",
            {"eventfd -> irqfd -> ISR (baseline)": raw,
             "device trigger -> eventfd -> irqfd -> ISR": dev}))
        for key, value in figures.items():
            costs.setdefault(key, []).append(value[0])
    if args.plot:
        panels.append(svgplot.bars("Guest-visible access (µs, mean)", groups, costs,
                                   "µs per guest access"))
        svgplot.write(args.plot, "bench/kvm.py: a KVM guest on a platpass device", panels,
                      note=f"python3 bench/kvm.py --reads {args.reads} --irqs {args.irqs} "
                           f"--plot FILE.svg; {'PVM' if pvm else 'hardware KVM'}")
        print(f"\nplot: {args.plot}")
    if pvm:
        print()
        print("Note: this host's KVM is PVM (no VT-x/SVM): a guest with paging off runs in "
              "KVM's instruction emulator, so every guest figure above includes emulation; "
              "the ratios compare like with like.")
    return 0


def measure(args: argparse.Namespace, server_cpu: int) -> dict[str, list[float]]:
    """One placement: every figure and its baseline (returned for ``--plot``, in µs)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), server_cpu)
        try:
            with Vm() as vm:
                vm.create_vcpu()
                device, channel = attach_socket(vm, Path(tmp) / "rtc@20000.sock", "rtc",
                                                guest_addresses=[DEVICE_BASE])
                uart, uart_channel = attach_socket(vm, Path(tmp) / "serial@0.sock", "uart",
                                                   guest_addresses=[UART_BASE])
                assert device.stats.mapped_bytes == 0x1000, "the PL031 page is not mapped"
                assert uart.stats.mapped_bytes == 0, "the PL011 page is not trapped"
                vm.add_mmio(RAW_BASE, 0x1000, Constant(), "raw")
                fd = os.memfd_create("bench-slot")
                os.ftruncate(fd, 4096)
                slot = mmap.mmap(fd, 4096)
                os.close(fd)
                vm.map_memory(SLOT_BASE, slot, label="slot")

                # warm up both paths once
                guest_read_cost(vm, RAW_BASE, 50)
                guest_read_cost(vm, UART_BASE + UARTFR, 50)
                rounds: dict[str, list[tuple[float, int]]] = {}

                def measure_round(key: str, address: int, count: int,
                                  program: str = "mmio_read") -> None:
                    rounds.setdefault(key, []).append(
                        guest_read_cost(vm, address, count, program))

                dmacr = UART_BASE + UARTDMACR
                guest_read_cost(vm, dmacr, 50, "mmio_write")
                for _round in range(max(args.rounds, 1)):
                    measure_round("raw", RAW_BASE, args.reads)
                    measure_round("dev", UART_BASE + UARTFR, args.reads)
                    measure_round("raw_w", RAW_BASE, args.reads, "mmio_write")
                    uart_channel.posted_writes = True
                    measure_round("posted", dmacr, args.reads, "mmio_write")
                    uart_channel.read(0, UARTFR, 4)  # every posted write is done after this
                    uart_channel.posted_writes = False
                    measure_round("replied", dmacr, args.reads, "mmio_write")
                    uart_channel.posted_writes = True
                raw_ns, raw_exits = min(rounds["raw"])
                dev_ns, dev_exits = min(rounds["dev"])
                raw_w_ns, _ = min(rounds["raw_w"])
                posted_ns, posted_exits = min(rounds["posted"])
                replied_ns, _ = min(rounds["replied"])
                rtc_ns, rtc_exits = guest_read_cost(vm, DEVICE_BASE, args.reads * 10)
                map_ns, map_exits = guest_read_cost(vm, SLOT_BASE, args.reads * 10)
                t0 = time.perf_counter_ns()
                for _ in range(args.reads):
                    uart_channel.read(0, UARTFR, 4)
                rtt_ns = (time.perf_counter_ns() - t0) / args.reads
                print(f"1. guest-visible 4-byte register read ({args.reads} loads, guest TSC; "
                      f"best of {max(args.rounds, 1)} alternating rounds)")
                print(f"   trapped, over vfio-user to the PL011 : {dev_ns / 1000:8.2f} µs/read "
                      f"({dev_exits} MMIO exits)")
                print(f"   raw KVM exit answered in-process     : {raw_ns / 1000:8.2f} µs/read "
                      f"({raw_exits} MMIO exits)")
                print(f"   ratio trapped / raw exit             : {dev_ns / raw_ns:8.2f}x")
                print(f"   (for reference: the same REGION_READ from this thread, no guest: "
                      f"{rtt_ns / 1000:.2f} µs)")
                print(f"   mapped PL031 RTCDR (its memory slot) : {rtc_ns:8.1f} ns/read "
                      f"({rtc_exits} MMIO exits; {args.reads * 10} loads)")
                print(f"   plain memfd memory slot (baseline)   : {map_ns:8.1f} ns/read "
                      f"({map_exits} MMIO exits)   ratio {rtc_ns / map_ns:.2f}x")
                print(f"   ratio trapped PL011 / mapped PL031   : {dev_ns / rtc_ns:8.0f}x")
                print(f"   trapped write, posted (default)      : {posted_ns / 1000:8.2f} µs/write"
                      f" ({posted_exits} MMIO exits)")
                print(f"   trapped write, replied               : {replied_ns / 1000:8.2f} "
                      "µs/write")
                print(f"   raw KVM exit of a store, in-process  : {raw_w_ns / 1000:8.2f} "
                      "µs/write")
                print(f"   ratio posted / raw exit              : {posted_ns / raw_w_ns:8.2f}x"
                      f"   (replied / raw exit {replied_ns / raw_w_ns:.2f}x)")

                gsi = device.irqs[0].gsi
                trigger_fd = device.irqs[0].trigger_fd
                raw = irq_latencies(vm, gsi, lambda: os.eventfd_write(trigger_fd, 1),
                                    args.irqs)
                dev = irq_latencies(vm, gsi, lambda: channel.client.trigger(0), args.irqs)
                rmed, dmed = statistics.median(raw), statistics.median(dev)
                print()
                print(f"2. interrupt delivery to the guest ISR ({args.irqs} interrupts, "
                      "host wall clock, median / p90)")
                print(f"   device: vfio-user loopback trigger -> eventfd -> irqfd -> ISR : "
                      f"{dmed:8.1f} / {statistics.quantiles(dev, n=10)[-1]:.1f} µs")
                print(f"   raw: eventfd written here -> irqfd -> ISR                    : "
                      f"{rmed:8.1f} / {statistics.quantiles(raw, n=10)[-1]:.1f} µs")
                print(f"   ratio device / raw irqfd                                     : "
                      f"{dmed / rmed:8.2f}x")
                print("   (the device figure includes the trigger request's trip to the "
                      "server; the ISR's report exit is in both)")
                figures = {"raw exit read (baseline)": [raw_ns / 1000],
                           "trapped read": [dev_ns / 1000],
                           "raw exit store": [raw_w_ns / 1000],
                           "posted write": [posted_ns / 1000],
                           "replied write": [replied_ns / 1000],
                           "irq raw": raw, "irq device": dev}
                device.detach()
                channel.close()
                uart.detach()
                uart_channel.close()
                slot.close()
        finally:
            server.terminate()
            server.wait(10)
    return figures


if __name__ == "__main__":
    sys.exit(main())
