"""Unmodified QEMU (vfio-user-pci) and an unmodified Linux driver (8250_pci) on a platpass
16550 served with a PCI personality, under TCG (x86 q35, Debian's stock amd64 kernel).

One boot is shared by the checks that read it: the guest's 8250_pci binds (its dmesg line),
text written in the guest arrives byte for byte in the simulated UART, bytes injected on
the host arrive in the guest, and the interrupt counts agree on both sides. A second
scenario SIGKILLs QEMU mid-transfer and boots a second QEMU on the same server.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu_image import LOG_DIR, QemuImage

from platpass.firmware import devicetree
from platpass.host.simulated.board import board_dts_path
from platpass.reactor import EpollReactor
from platpass.vmm.qemu_pci import (
    RX_TEXT,
    PciUartRun,
    RxFeeder,
    ServedPciFunction,
    busybox_initramfs,
    count_trace,
    guest_init,
    intx_trace,
    serve_pci_function,
    tx_payload,
    vfio_user_pci,
)

BOARD = board_dts_path("sim-pci-uart.dts")
UART = "/soc@9000000/serial@50000"
TX_LINES = 40
BOOT_TIMEOUT = 240.0
ARM64_MACHINE = ("-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "512")
ARM64_APPEND = "console=ttyAMA0 8250.nr_uarts=8 quiet panic=-1"


@dataclass
class Host:
    """The server side of one scenario: reactor, served UART, temp dir."""

    reactor: EpollReactor
    served: ServedPciFunction
    socket: Path
    tmp: Path
    image: QemuImage

    def boot(self, name: str, init: str, on_marker=None, arm64: bool = False) -> PciUartRun:
        initrd = self.tmp / f"{name}.cpio.gz"
        busybox = self.image.busybox_arm64 if arm64 else self.image.busybox
        initrd.write_bytes(busybox_initramfs(busybox, init))
        trace = LOG_DIR / f"{name}.trace"
        trace.unlink(missing_ok=True)
        if arm64:
            qemu = self.image.qemu_arm64
            assert qemu is not None, "no qemu-system-aarch64 in the prepared root"
            argv = qemu.command(kernel=self.image.kernel_arm64, initrd=initrd,
                                devices=[vfio_user_pci(self.socket)], machine=ARM64_MACHINE,
                                append=ARM64_APPEND, extra=intx_trace(trace))
        else:
            argv = self.image.qemu.command(kernel=self.image.kernel, initrd=initrd,
                                           devices=[vfio_user_pci(self.socket)],
                                           extra=intx_trace(trace))
        run = PciUartRun(self.reactor, argv, LOG_DIR / f"{name}.log", on_marker)
        run.start()
        return run


def _host(image: QemuImage, tree) -> Iterator[Host]:
    reactor = EpollReactor()
    with tempfile.TemporaryDirectory(prefix="platpass-qemu-") as tmp:
        socket = Path(tmp) / "uart.sock"
        served = serve_pci_function(reactor, tree, UART, socket)
        try:
            yield Host(reactor, served, socket, Path(tmp), image)
        finally:
            served.close()
            reactor.close()


@pytest.fixture
def host(qemu_image: QemuImage) -> Iterator[Host]:
    yield from _host(qemu_image, devicetree.load_dts(BOARD))


@pytest.fixture
def host_14m(qemu_image: QemuImage) -> Iterator[Host]:
    """The same 16550 clocked at 14.7456 MHz (base baud 921600): another table entry."""
    source = BOARD.read_text().replace("clock-frequency = <1843200>",
                                       "clock-frequency = <14745600>")
    yield from _host(qemu_image, devicetree.load_dts_source(source))


def _transfer(host: Host, name: str, arm64: bool = False) -> PciUartRun:
    """Boot the transmit/receive guest; feed the RX text when it is ready."""
    model = host.served.model
    ident = host.served.device.identity

    def on_marker(marker: str, _rest: str) -> None:
        if marker == "RX-READY":
            RxFeeder(host.reactor, model, RX_TEXT).start()

    started = time.monotonic()
    run = host.boot(name, guest_init(ident.vendor, ident.device, tx_lines=TX_LINES),
                    on_marker, arm64)
    assert run.wait(BOOT_TIMEOUT), f"guest did not finish in {BOOT_TIMEOUT}s:\n{run.tail()}"
    print(f"\n{name}: boot to poweroff {time.monotonic() - started:.1f}s, log {run.log_path}")
    return run


@pytest.fixture
def transfer_run(host: Host) -> tuple[Host, PciUartRun, int]:
    stats = host.served.device.stats.irqs[0]
    before = (stats.delivered, stats.unmasks)
    return host, _transfer(host, "qemu-pci-transfer"), before


def test_unmodified_guest_driver_binds_and_moves_data_both_ways(transfer_run):
    host, run, (delivered_before, unmasks_before) = transfer_run
    # The guest's 8250_pci bound to the function and registered a 16550A on its BAR.
    assert run.first("PCI") is not None and run.first("PCI").endswith("driver=serial"), \
        run.tail()
    dmesg = run.markers.get("DMESG", [])
    assert any("ttyS4 at MMIO" in line and "is a 16550A" in line for line in dmesg), dmesg
    assert run.first("TTY") == "ttyS4"
    # Guest -> host: every byte, in order.
    sent = tx_payload(TX_LINES)
    assert run.first("TX-SENT") == str(len(sent))
    host.reactor.run_until(lambda: len(host.served.model.tx_output) >= len(sent), 10)
    assert bytes(host.served.model.tx_output) == sent
    # Host -> guest.
    assert run.first("RX") == RX_TEXT.decode(), run.tail()
    # Interrupts. Both ends of the wire agree: every INTx trigger platpass signalled is one
    # QEMU received (its trace), every EOI QEMU sent is an unmask here. QEMU treats any BAR
    # access as the EOI of a pending INTx (without KVM it cannot see the guest's EOI), so
    # one guest interrupt can span several triggers: the guest's count is at most ours.
    stats = host.served.device.stats.irqs[0]
    delivered = stats.delivered - delivered_before
    unmasks = stats.unmasks - unmasks_before
    trace = LOG_DIR / "qemu-pci-transfer.trace"
    assert count_trace(trace, "vfio_intx_interrupt") == delivered > 0
    # Every EOI QEMU sent is an unmask here; the few others are QEMU enabling INTx
    # (SET_IRQS UNMASK) and the guest clearing Interrupt Disable in the command register.
    eois = count_trace(trace, "vfio_pci_intx_eoi")
    assert eois <= unmasks <= eois + 3, (eois, unmasks)
    guest_irqs = int(run.first("IRQS") or -1)
    assert 0 < guest_irqs <= delivered, (guest_irqs, delivered)
    print(f"interrupts: platpass delivered {delivered}, unmasked {unmasks}; QEMU received "
          f"{delivered}, sent {eois} EOIs; the guest's handler ran {guest_irqs} times")
    assert run.first("END") is not None


def test_qemu_killed_mid_transfer_then_a_second_qemu_works(host: Host):
    ident = host.served.device.identity
    flood = 64 * 1024
    model = host.served.model
    first = host.boot("qemu-pci-killed", guest_init(ident.vendor, ident.device,
                                                    flood_bytes=flood))
    # Kill once the guest's bytes are flowing, well before the flood ends.
    assert host.reactor.run_until(lambda: len(model.tx_output) >= 512 or first.done,
                                  BOOT_TIMEOUT), first.tail()
    assert not first.done, f"the guest finished before the kill:\n{first.tail()}"
    first.kill()
    assert host.reactor.run_until(lambda: first.done, 30)
    got = len(model.tx_output)
    assert 512 <= got < flood and set(bytes(model.tx_output)) == {ord("U")}
    model.take_tx()
    # The server still serves; a second QEMU attaches and the whole transfer works.
    run = _transfer(host, "qemu-pci-second")
    sent = tx_payload(TX_LINES)
    host.reactor.run_until(lambda: len(model.tx_output) >= len(sent), 10)
    assert run.first("PCI", ).endswith("driver=serial"), run.tail()
    assert bytes(model.tx_output) == sent
    assert run.first("RX") == RX_TEXT.decode(), run.tail()


def test_demo_segment_runs_when_qemu_is_at_hand(qemu_image: QemuImage, capsys):
    from platpass.cli.demo_qemu import run_segment

    assert run_segment(6, print) is True
    out = capsys.readouterr().out
    assert "PCI 115d:0101: 8250_pci" in out
    assert "ttyS4 at MMIO" in out and "is a 16550A" in out
    assert "bytes, identical" in out and RX_TEXT.decode() in out


def test_arm64_virt_guest_binds_and_moves_data_both_ways(host: Host):
    """The same with Debian's stock arm64 kernel on QEMU's virt machine (PCIe through
    pci-host-generic; no legacy ports, so the function's port is ttyS0)."""
    model = host.served.model
    run = _transfer(host, "qemu-pci-arm64", arm64=True)
    assert (run.first("PCI") or "").endswith("driver=serial"), run.tail()
    dmesg = run.markers.get("DMESG", [])
    tty = run.first("TTY")
    assert tty and any(f"{tty} at MMIO" in line and "is a 16550A" in line for line in dmesg), \
        dmesg
    sent = tx_payload(TX_LINES)
    host.reactor.run_until(lambda: len(model.tx_output) >= len(sent), 10)
    assert bytes(model.tx_output) == sent
    assert run.first("RX") == RX_TEXT.decode(), run.tail()
    delivered = host.served.device.stats.irqs[0].delivered
    trace = LOG_DIR / "qemu-pci-arm64.trace"
    assert count_trace(trace, "vfio_intx_interrupt") == delivered > 0
    assert 0 < int(run.first("IRQS") or -1) <= delivered


def test_a_14_7456_mhz_16550_gets_the_titan_100_id_and_binds(host_14m: Host):
    ident = host_14m.served.device.identity
    assert (ident.vendor, ident.device) == (0x14D2, 0xA001)
    run = _transfer(host_14m, "qemu-pci-titan")
    assert (run.first("PCI") or "").endswith("driver=serial"), run.tail()
    dmesg = run.markers.get("DMESG", [])
    assert any("ttyS4 at MMIO" in line and "base_baud = 921600" in line for line in dmesg), \
        dmesg
    sent = tx_payload(TX_LINES)
    model = host_14m.served.model
    host_14m.reactor.run_until(lambda: len(model.tx_output) >= len(sent), 10)
    assert bytes(model.tx_output) == sent
    assert model.divisor == 8    # the guest asked for 115200 of a 921600 base
    assert run.first("RX") == RX_TEXT.decode(), run.tail()
