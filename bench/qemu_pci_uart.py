"""Guest UART throughput: a platpass 16550 served as PCI to QEMU's vfio-user-pci, beside
QEMU's own emulated PCI serial device (``pci-serial``), in the same run.

Both guests are the same stock Debian amd64 kernel under TCG (q35), bound by the same
unmodified ``8250_pci`` driver, writing the same bytes to their port at the highest rate
the device accepts: 115200 baud (divisor 1 of the 1.8432 MHz clock the PCI ID implies).
The guest times its own write (``cat`` of N bytes into the raw tty, ``/proc/uptime``
around it, 10 ms steps); the host also times the platpass side from first to last byte.

The platpass model transmits at the line rate it is programmed for (a character takes 10
bit times at 8N1: 11,520 B/s at 115200), as the real UART it stands for would; QEMU's
``pci-serial`` hands bytes to its chardev as fast as the guest writes them, whatever the
baud rate. So the ratio says how much of QEMU's emulated-device speed a real-time 16550
gives, and the line-rate fraction says what platpass + vfio-user cost on top of the wire.

    python3 bench/qemu_pci_uart.py [--bytes 262144]

Needs the image the QEMU tests build (``python3 -m pytest tests/integration/qemu_pci``
once), or PLATPASS_QEMU_ROOT/PLATPASS_GUEST_KERNEL/PLATPASS_GUEST_BUSYBOX.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from platpass.firmware import devicetree
from platpass.host.simulated.board import board_dts_path
from platpass.reactor import EpollReactor
from platpass.vmm.qemu_pci import (
    PciUartRun,
    busybox_initramfs,
    find_guest_image,
    guest_init,
    serve_pci_function,
    vfio_user_pci,
)

BOARD = board_dts_path("sim-pci-uart.dts")
UART = "/soc@9000000/serial@50000"
QEMU_PCI_SERIAL = (0x1B36, 0x0002)
LINE_RATE = 115200 / 10  # bytes/s at 115200 8N1


def _flood(run: PciUartRun, label: str) -> tuple[int, float]:
    text = run.first("FLOOD")
    if text is None:
        sys.exit(f"{label}: the guest did not report its write:\n{run.tail()}")
    count, nanos = (int(x) for x in text.split())
    return count, nanos / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=256 * 1024)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    image = find_guest_image()
    if image is None:
        sys.exit("no QEMU >= 10.1 guest image: run python3 -m pytest tests/integration/qemu_pci")
    version = ".".join(map(str, image.qemu.version))
    print(f"QEMU {version} (TCG, q35), kernel {image.kernel}, {args.bytes} bytes per guest")
    reactor = EpollReactor()
    with tempfile.TemporaryDirectory(prefix="platpass-bench-") as tmp:
        work = Path(tmp)
        socket = work / "uart.sock"
        served = serve_pci_function(reactor, devicetree.load_dts(BOARD), UART, socket)
        model = served.model
        times: list[float] = []
        model.on_tx = lambda _b: times.append(time.monotonic())
        busybox = image.busybox.read_bytes()
        try:
            ident = served.device.identity
            initrd = work / "platpass.cpio.gz"
            initrd.write_bytes(busybox_initramfs(busybox, guest_init(
                ident.vendor, ident.device, flood_bytes=args.bytes)))
            run = PciUartRun(reactor, image.qemu.command(
                kernel=image.kernel, initrd=initrd, devices=[vfio_user_pci(socket)]),
                work / "platpass.log")
            run.start()
            if not run.wait(args.timeout):
                sys.exit(f"platpass guest timed out:\n{run.tail()}")
            count, guest_seconds = _flood(run, "platpass")
            received = len(model.tx_output)
            stats = served.device.stats
            accesses = (stats.backend_reads + stats.backend_writes + stats.trapped_reads
                        + stats.trapped_writes)
            interrupts = stats.irqs[0].delivered
            host_seconds = times[-1] - times[0] if len(times) > 1 else float("nan")
        finally:
            served.close()
        # QEMU's own device, same kernel and driver; its chardev is a file.
        initrd = work / "qemu.cpio.gz"
        initrd.write_bytes(busybox_initramfs(busybox, guest_init(
            *QEMU_PCI_SERIAL, flood_bytes=args.bytes)))
        out = work / "pci-serial.out"
        run2 = PciUartRun(reactor, image.qemu.command(
            kernel=image.kernel, initrd=initrd,
            devices=["pci-serial,chardev=bench"],
            extra=("-chardev", f"file,id=bench,path={out}")), work / "qemu.log")
        run2.start()
        if not run2.wait(args.timeout):
            sys.exit(f"pci-serial guest timed out:\n{run2.tail()}")
        count2, seconds2 = _flood(run2, "pci-serial")
        received2 = out.stat().st_size if out.exists() else 0
    reactor.close()
    platpass_rate = count / guest_seconds
    qemu_rate = count2 / seconds2
    print(f"platpass 16550 via vfio-user-pci : {count} B in {guest_seconds:.2f} s (guest) = "
          f"{platpass_rate:,.0f} B/s; host received {received} B, first to last byte "
          f"{host_seconds:.2f} s = {received / host_seconds:,.0f} B/s")
    print(f"platpass device side             : {accesses} register accesses "
          f"({accesses / max(received, 1):.2f} per byte, each a vfio-user round trip), "
          f"{interrupts} INTx triggers; {guest_seconds / max(accesses, 1) * 1e6:.0f} us "
          "of guest time per access")
    print(f"QEMU pci-serial (emulated)       : {count2} B in {seconds2:.2f} s (guest) = "
          f"{qemu_rate:,.0f} B/s; chardev got {received2} B")
    print(f"ratio platpass / QEMU pci-serial : {platpass_rate / qemu_rate:.3f}x")
    print(f"platpass / 115200-baud line rate : {platpass_rate / LINE_RATE:.2f} "
          f"({LINE_RATE:,.0f} B/s at 8N1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
