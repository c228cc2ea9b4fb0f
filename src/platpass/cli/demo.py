"""``platpass demo``: the whole path on the built-in simulated board, in a few seconds.

1. scan the simulated board and print every verdict (bus masters refused, with evidence);
2. serve the simple devices it drives (PL011 UART, PL031 RTC) over vfio-user, from a
   server thread of this process (so the UART's output can be shown from the device side);
3. place them in the guest and produce their guest device tree (a crosvm overlay compiled
   by dtc; informational here, since the KVM guest is x86 and finds its devices from boot
   info, but it is the file an arm64 VMM would take);
4. boot a KVM guest whose bare-metal programs drive the devices: print through the PL011,
   read the PL031 counter, take the PL031 alarm interrupt through irqfd, ack it, EOI;
5. summarise: the UART text as the device received it, interrupts delivered, exits taken
   and avoided;
6. when QEMU >= 10.1 is at hand (:mod:`platpass.cli.demo_qemu`), boot a stock Linux guest
   whose unmodified ``8250_pci`` drives the simulated 16550 served as a PCI function over
   QEMU's ``vfio-user-pci``; otherwise say how to get such a QEMU (``--no-qemu`` skips it).

The two devices show both sides of passthrough. The PL011's page holds FIFO registers
(and the driver's ``UARTDMACR`` trap), so every guest access to it is a KVM MMIO exit
forwarded over vfio-user. The simulated PL031 declares no side-effect register, so its
page is a KVM memory slot over the device's memfd: the guest reads the counter and sets
up and acks its alarm with no exit at all, and the device takes the mapped writes over at
its event boundaries (the 1 Hz tick, the unmask caused by the guest's EOI).

Without ``/dev/kvm`` it says why and runs the same driver sequence through the vfio-user
client library instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from platpass.errors import PlatpassError, VmmError
from platpass.firmware.verdict import Verdict

DEVICES = ("arm,pl011", "arm,pl031")
MESSAGE = "Hello from a KVM guest, through vfio-user, to a simulated PL011!\n"

# PL011 and PL031 register offsets the driver sequence uses.
UARTDR, UARTFR, UARTLCR_H, UARTCR = 0x00, 0x18, 0x2C, 0x30
FR_TXFF, FR_BUSY = 1 << 5, 1 << 3
RTCDR, RTCMR, RTCIMSC, RTCICR = 0x00, 0x04, 0x10, 0x1C
#: Present when the host's KVM is PVM (resample at injection, not at the guest's EOI).
PVM_HOST = Path("/sys/module/kvm_pvm")
#: Guest reads of the PL031 counter in the mmio_read program (mapped: no exit each).
RTC_READS = 10_000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the ``platpass`` command line."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole path on the simulated board: scan, serve, guest DT, KVM guest",
        description="Scan the built-in simulated board, serve its UART and RTC over "
                    "vfio-user, and boot a KVM guest that drives them.",
    )
    parser.add_argument("--no-kvm", action="store_true",
                        help="drive the devices through the client library, not a guest")
    parser.add_argument("--no-qemu", action="store_true",
                        help="leave out the QEMU vfio-user-pci segment (a Linux guest "
                             "under TCG, ~30 s)")
    parser.add_argument("--keep", metavar="DIR",
                        help="keep the guest device tree and placement record in DIR")
    parser.set_defaults(func=run)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _section(number: int, title: str) -> None:
    _say()
    _say(f"[{number}] {title}")


def _scan(board: Any) -> None:
    _section(1, "scan: the simulated board's devices and their verdicts")
    width = max(len(a.node.path) for a in board.assessments)
    for a in sorted(board.assessments, key=lambda a: a.node.path):
        first = a.evidence[0]
        compat = a.node.compatible[0] if a.node.compatible else "-"
        _say(f"    {a.node.path:<{width}}  {compat:<20} {a.verdict.name:<22} "
             f"{first.rule}: {first.property}")
    refused = [a for a in board.assessments if a.verdict is Verdict.REFUSED_BUS_MASTER]
    _say(f"    -> {len(refused)} bus master(s) refused: "
         + ", ".join(a.node.name for a in refused))


def _guest_dt(board: Any, out_dir: Path) -> dict[str, Any]:
    from platpass.cli.guest_dt import provider_names
    from platpass.guest.flavours import crosvm
    from platpass.guest.placement import Allocator, new_record
    from platpass.guest.transform import ClockRates, build_guest_device

    _section(3, "guest device tree: placement and crosvm overlay")
    allocator = Allocator(new_record())
    nodes = [served.node for served in board.devices]
    rates = ClockRates(provider_names=provider_names(board.tree, nodes))
    placements: dict[str, Any] = {}
    guests = []
    for served in board.devices:
        placement = allocator.place(served.node)
        placements[served.node.path] = placement
        driver = served.assessment.driver(served.node)
        guests.append(build_guest_device(served.node, driver, placement, rates=rates,
                                         host_phandles=frozenset(board.tree.raw.by_phandle)))
        irqs = ", ".join(f"SPI {i.guest_spi} ({i.guest_trigger})"
                         for i in placement.interrupts)
        _say(f"    {served.node.path} -> guest {placement.guest_address:#x}, {irqs}")
    overlay = out_dir / "guest-overlay.dtbo"
    output = crosvm.build(guests, str(overlay))
    overlay.write_bytes(output.blob)
    (out_dir / "guest-overlay.dts").write_text(output.source)
    (out_dir / "placement.json").write_text(allocator.record.to_json())
    _say(f"    overlay: {len(output.blob)} bytes compiled by dtc -> {overlay}")
    for line in output.vmm_lines:
        _say(f"      crosvm {line}")
    _say("    (informational here: this host's KVM guest is x86 and learns its device "
         "addresses from boot info)")
    return placements


def _run_kvm(board: Any, placements: dict[str, Any]) -> dict[str, Any]:
    from platpass.vmm.client import attach_socket
    from platpass.vmm.guest_programs import BootInfo, load_program
    from platpass.vmm.kvm import Vm
    from platpass.vmm.kvm_uapi import Exit

    uart = board.device("arm,pl011")
    rtc = board.device("arm,pl031")
    _section(4, "KVM guest: bare-metal programs drive the devices over vfio-user")
    results: dict[str, Any] = {}
    with Vm() as vm:
        _say(f"    VM: 2 MiB RAM, {vm.arch.irqchip_description()}")
        wired = []
        try:
            for served in board.devices:
                device, channel = attach_socket(vm, served.socket, served.node.name,
                                                placement=placements[served.node.path])
                wired.append((device, channel))
                irqs = ", ".join(
                    f"irq {w.index} -> GSI {w.gsi} "
                    + ("(level: resample fd = device UNMASK)" if w.level else "(edge)")
                    for w in device.irqs)
                _say(f"    {served.node.name}: {device.stats.mapped_bytes} bytes mapped, "
                     f"{device.stats.trapped_bytes} trapped; {irqs}")
            uart_base = placements[uart.node.path].guest_address
            rtc_base = placements[rtc.node.path].guest_address
            rtc_gsi = wired[[s.node.path for s in board.devices].index(rtc.node.path)][0] \
                .irqs[0].gsi
            vcpu = vm.create_vcpu()

            ports = load_program(vm, "pl011", BootInfo(uart=uart_base,
                                                       message=MESSAGE.encode()))
            start = vm.exits.snapshot()
            vcpu.run(timeout=10)
            _check(ports, "pl011")
            results["uart_exits"] = vm.exits.since(start)
            results["uart_text"] = board.call(uart.model.take_tx)
            results["uart_fr"], results["uart_cr"], results["uart_sent"] = ports.reports[:3]
            _say(f"    pl011 program: sent {results['uart_sent']} bytes polling UARTFR; "
                 f"UARTFR reads back {results['uart_fr']:#x}, UARTCR {results['uart_cr']:#x}")

            results["uart_mmio_exits"] = results["uart_exits"].by_reason[Exit.MMIO]
            uart_wired = wired[[s.node.path for s in board.devices].index(uart.node.path)][0]
            results["uart_accesses"] = (uart_wired.stats.forwarded_reads
                                        + uart_wired.stats.forwarded_writes)
            _say(f"    pl011 program: {results['uart_mmio_exits']} MMIO exits for "
                 f"{results['uart_accesses']} forwarded accesses (trapped page)")

            reads = RTC_READS
            ports = load_program(vm, "mmio_read", BootInfo(read_address=rtc_base + RTCDR,
                                                           count=reads), ports)
            start = vm.exits.snapshot()
            vcpu.run(timeout=10)
            _check(ports, "mmio_read")
            results["rtc_value"] = ports.reports[0]
            results["rtc_reads"] = reads
            results["rtc_exits"] = vm.exits.since(start).by_reason[Exit.MMIO]
            _say(f"    mmio_read program: RTCDR = {ports.reports[0]} "
                 f"({time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ports.reports[0]))} "
                 f"UTC), {reads} reads through the memory slot, "
                 f"{results['rtc_exits']} MMIO exits")

            ports = load_program(vm, "irq", BootInfo(
                gsi=rtc_gsi, level=True, setup=((rtc_base + RTCIMSC, 1),),
                read_address=rtc_base + RTCDR, arm_address=rtc_base + RTCMR, arm_value=1,
                arm_relative=True, ack_address=rtc_base + RTCICR, ack_value=1), ports)
            t0 = time.monotonic()
            start = vm.exits.snapshot()
            vcpu.run(timeout=5)
            _check(ports, "irq")
            results["irq_mmio_exits"] = vm.exits.since(start).by_reason[Exit.MMIO]
            results["irq_taken"] = ports.reports[0]
            results["irq_wait"] = time.monotonic() - t0
            results["irq_stats"] = board.call(lambda: rtc.device.stats.irqs[0])
            _say(f"    irq program: RTC alarm (RTCMR = RTCDR + 1) taken by the guest ISR "
                 f"{results['irq_taken']}x after {results['irq_wait']:.2f} s; ISR acked "
                 f"RTCICR and EOI'd; {results['irq_mmio_exits']} MMIO exits (RTCIMSC, "
                 "RTCDR, RTCMR, RTCICR all through the memory slot)")
            results["exits"] = vm.exits
            results["forwarded"] = sum(d.stats.forwarded_reads + d.stats.forwarded_writes
                                       for d, _ in wired)
            results["mapped"] = sum(d.stats.mapped_bytes for d, _ in wired)
            rtc_wired = wired[[s.node.path for s in board.devices].index(rtc.node.path)][0]
            results["rtc_mapped"] = rtc_wired.stats.mapped_bytes
            results["rtc_forwarded"] = (rtc_wired.stats.forwarded_reads
                                        + rtc_wired.stats.forwarded_writes)
        finally:
            for device, channel in wired:
                device.detach()
                channel.close()
    return results


def _check(ports: Any, name: str) -> None:
    if ports.result != 0:
        raise VmmError(f"guest program {name} finished with {ports.result} "
                       f"(reports {ports.reports})")


def _run_client(board: Any) -> dict[str, Any]:
    """The guest programs' driver sequence, through the vfio-user client library."""
    from platpass.vfio_device.uapi import IrqSetFlags
    from platpass.vmm.client import VfioUserChannel

    uart = board.device("arm,pl011")
    rtc = board.device("arm,pl031")
    _section(4, "client library: the guest programs' driver sequence over vfio-user")
    results: dict[str, Any] = {}
    u = VfioUserChannel.connect(uart.socket)
    r = VfioUserChannel.connect(rtc.socket)
    trigger = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        u.write(0, UARTLCR_H, 4, 0x70)
        u.write(0, UARTCR, 4, 0x301)
        for byte in MESSAGE.encode():
            while u.read(0, UARTFR, 4) & FR_TXFF:
                pass
            u.write(0, UARTDR, 4, byte)
        deadline = time.monotonic() + 5
        while u.read(0, UARTFR, 4) & FR_BUSY and time.monotonic() < deadline:
            time.sleep(0.001)
        results["uart_text"] = board.call(uart.model.take_tx)
        results["uart_fr"] = u.read(0, UARTFR, 4)
        _say(f"    UART: sent {len(MESSAGE)} bytes; UARTFR reads back {results['uart_fr']:#x}")
        results["rtc_value"] = r.read(0, RTCDR, 4)
        page = r.client.map_region(0)  # the PL031's page is offered whole
        try:
            results["rtc_mapped_value"] = page.read32(RTCDR)
        finally:
            page.close()
        _say(f"    RTC: RTCDR = {results['rtc_value']} by REGION_READ, "
             f"{results['rtc_mapped_value']} through the mapped page (no message)")
        r.set_irqs(0, IrqSetFlags.DATA_EVENTFD | IrqSetFlags.ACTION_TRIGGER, 0, 1,
                   fds=(trigger,))
        r.write(0, RTCIMSC, 4, 1)
        r.write(0, RTCMR, 4, r.read(0, RTCDR, 4) + 1)
        t0 = time.monotonic()
        ready, _, _ = select.select([trigger], [], [], 3.0)
        if not ready:
            raise VmmError("the RTC alarm did not fire within 3 s")
        os.eventfd_read(trigger)
        r.write(0, RTCICR, 4, 1)
        r.set_irqs(0, IrqSetFlags.DATA_NONE | IrqSetFlags.ACTION_UNMASK, 0, 1)
        results["irq_taken"] = 1
        results["irq_wait"] = time.monotonic() - t0
        results["irq_stats"] = board.call(lambda: rtc.device.stats.irqs[0])
        _say(f"    RTC alarm: trigger eventfd signalled after {results['irq_wait']:.2f} s; "
             "acked RTCICR, unmasked")
    finally:
        os.close(trigger)
        u.close()
        r.close()
    return results


def _summary(results: dict[str, Any], kvm: bool, elapsed: float) -> None:
    _section(5, "summary")
    text = results["uart_text"].decode(errors="replace")
    ok_text = text == MESSAGE
    _say(f"    UART output received by the simulated PL011: {text.rstrip()!r} "
         f"({'matches' if ok_text else 'DIFFERS from'} what the guest sent)")
    stats = results["irq_stats"]
    _say(f"    interrupts: the RTC alarm was taken {results['irq_taken']}x by the "
         f"{'guest ISR' if kvm else 'client'}; the device signalled its trigger eventfd "
         f"{stats.delivered}x and was unmasked {stats.unmasks}x"
         + (" through the KVM resample fd" if kvm else "")
         + " (a level line still asserted when unmasked fires again)")
    if kvm and stats.delivered > results["irq_taken"] and PVM_HOST.exists():
        _say("    (the extra trigger: this host's KVM is PVM, which signals the resample fd "
             "when it injects the interrupt, before the ISR's ack; the device then still "
             "sees the line asserted, and the guest program has finished before it lands)")
    if kvm:
        exits = results["exits"]
        _say(f"    KVM exits: {exits.describe()} "
             f"(MMIO forwarded to the device over vfio-user: {results['forwarded']})")
        _say(f"    mapped: the PL031 page, {results['rtc_mapped']} bytes, is a KVM memory "
             "slot over the device's memfd: the guest read RTCDR "
             f"{results['rtc_reads']}x and set up and acked its alarm with "
             f"{results['rtc_exits'] + results['irq_mmio_exits']} MMIO exits "
             f"({results['rtc_forwarded']} accesses forwarded); the device took the mapped "
             "writes over at its event boundaries (the 1 Hz tick, the unmask from the "
             "guest's EOI)")
        _say(f"    trapped: the PL011 page holds FIFO registers (and the UARTDMACR trap): "
             f"{results['uart_mmio_exits']} MMIO exits for its {results['uart_accesses']} "
             "guest accesses, one exit and one vfio-user round trip each")
    _say(f"    done in {elapsed:.2f} s")


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0 when every step did what it should."""
    from platpass.vmm.kvm import kvm_unavailable_reason
    from platpass.vmm.simboard import SimBoardServer

    started = time.monotonic()
    _say("platpass demo: the simulated board, end to end")
    reason = None if args.no_kvm else kvm_unavailable_reason()
    use_kvm = not args.no_kvm and reason is None
    if reason is not None:
        _say(f"    no KVM guest: {reason}")
        _say("    running the same driver sequence through the vfio-user client library")
    keep = Path(args.keep) if args.keep else None
    work = Path(tempfile.mkdtemp(prefix="platpass-demo-"))
    try:
        with SimBoardServer(DEVICES, socket_dir=work) as board:
            _scan(board)
            _section(2, "serve: assignable devices over vfio-user (server thread)")
            for served in board.devices:
                _say(f"    {served.node.path} ({served.node.compatible[0]}, "
                     f"{served.assessment.verdict.name}) on {served.socket}")
            placements = _guest_dt(board, work)
            results = _run_kvm(board, placements) if use_kvm else _run_client(board)
            _summary(results, use_kvm, time.monotonic() - started)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("guest-overlay.dtbo", "guest-overlay.dts", "placement.json"):
                shutil.copy(work / name, keep / name)
            _say(f"    guest DT and placement record kept in {keep}")
    except PlatpassError as err:
        print(f"platpass demo: failed: {err}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
    ok = results["uart_text"] == MESSAGE.encode() and results["irq_taken"] >= 1
    if ok and not args.no_qemu:
        from platpass.cli.demo_qemu import run_segment

        ok = run_segment(6, _say) is not False
    if not ok:
        print(textwrap.fill("platpass demo: the devices did not see what the guest did"),
              file=sys.stderr)
    return 0 if ok else 1
