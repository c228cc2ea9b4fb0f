"""The ``platpass demo`` segment with QEMU's own vfio-user client and an unmodified Linux
driver: the simulated 16550 served as a PCI function (``platpass serve --pci auto``), a
stock Linux guest under QEMU >= 10.1 ``vfio-user-pci`` (TCG) whose ``8250_pci`` binds it,
writes a text that the device receives and reads a text the device is given.

When no QEMU >= 10.1 (with a guest kernel and a static busybox) is found, it says how to
get one instead (:data:`HOW_TO_GET_QEMU`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

#: Printed when the segment cannot run.
HOW_TO_GET_QEMU = """\
    skipped: no QEMU >= 10.1 with vfio-user-pci was found (with a guest kernel and busybox).
    To get one: python3 -m pytest tests/integration/qemu_pci  (builds a Debian trixie root
    with QEMU from trixie-backports, Debian's amd64 kernel and busybox-static into
    ~/.cache/platpass/qemu-pci, ~1 min, as root), or install qemu-system-x86 >= 10.1
    (Debian: apt-get install -t trixie-backports qemu-system-x86) and set
    PLATPASS_GUEST_KERNEL=/boot/vmlinuz-... PLATPASS_GUEST_BUSYBOX=/bin/busybox (static)."""


def run_segment(number: int, say: Any, timeout: float = 300.0) -> bool | None:
    """Run the segment under heading ``number``; True when the guest did everything,
    False when it did not, None when it could not run (and said how to get QEMU)."""
    from platpass.firmware import devicetree
    from platpass.host.simulated.board import board_dts_path
    from platpass.reactor import EpollReactor
    from platpass.vmm.qemu_pci import (
        RX_TEXT,
        PciUartRun,
        RxFeeder,
        busybox_initramfs,
        find_guest_image,
        guest_init,
        serve_pci_function,
        tx_payload,
        vfio_user_pci,
    )

    say()
    say(f"[{number}] QEMU vfio-user-pci: an unmodified Linux driver on the 16550 as PCI")
    image = find_guest_image()
    if image is None:
        say(HOW_TO_GET_QEMU)
        return None
    board = board_dts_path("sim-pci-uart.dts")
    node = "/soc@9000000/serial@50000"
    reactor = EpollReactor()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="platpass-demo-qemu-") as tmp:
            socket = Path(tmp) / "uart.sock"
            served = serve_pci_function(reactor, devicetree.load_dts(board), node, socket)
            try:
                ident = served.device.identity
                say(f"    serve: {node} of {board.name} as PCI {served.why}")
                initrd = Path(tmp) / "initrd.gz"
                initrd.write_bytes(busybox_initramfs(image.busybox.read_bytes(),
                                                     guest_init(ident.vendor, ident.device)))
                argv = image.qemu.command(kernel=image.kernel, initrd=initrd,
                                          devices=[vfio_user_pci(socket)])
                say(f"    QEMU {'.'.join(map(str, image.qemu.version))}: "
                    f"qemu-system-x86_64 -M q35 -accel tcg ... -device "
                    f"'{vfio_user_pci(socket)}'")

                def on_marker(name: str, _rest: str) -> None:
                    if name == "RX-READY":
                        RxFeeder(reactor, served.model, RX_TEXT).start()

                run = PciUartRun(reactor, argv, Path(tmp) / "console.log", on_marker)
                run.start()
                finished = run.wait(timeout)
                sent = tx_payload(40)
                reactor.run_until(lambda: len(served.model.tx_output) >= len(sent), 5)
                bound = [line.split("] ", 1)[-1] for line in run.markers.get("DMESG", [])
                         if "at MMIO" in line]
                say(f"    guest: {bound[0] if bound else 'no 8250_pci port registered'}")
                got = bytes(served.model.tx_output)
                first_line = got.split(b"\n", 1)[0].decode(errors="replace")
                say(f"    guest -> device: {len(got)} of {len(sent)} bytes, "
                    f"{'identical' if got == sent else 'DIFFERENT'}; first line: "
                    f"{first_line!r}")
                say(f"    device -> guest: {run.first('RX')!r}")
                stats = served.device.stats.irqs[0]
                say(f"    INTx: {stats.delivered} triggers delivered, {stats.unmasks} unmasks; "
                    f"the guest's handler ran {run.first('IRQS')} times")
                ok = finished and got == sent and run.first("RX") == RX_TEXT.decode()
                say(f"    done in {time.monotonic() - started:.1f} s "
                    f"({'ok' if ok else 'FAILED: see ' + str(run.log_path)})")
                return ok
            finally:
                served.close()
    finally:
        reactor.close()
