"""A device *behind* an assigned controller, probed by a real guest kernel from the tree
platpass generates (issue 12, rule 7): a simulated Cavium MPI SPI master with an AT25 EEPROM
on chip select 0 (``boards/sim-pci-spi.dts``), served as a ThunderX SPI PCI function, in
Debian's stock arm64 kernel on QEMU virt (TCG).

Nothing about the EEPROM is written by hand: ``platpass guest-dt --flavour qemu --pci-slot``
takes QEMU's own virt DTB (dumped with the same machine options) and puts the controller's
node, with its EEPROM child copied from the host tree, under the PCIe host bridge at the
slot QEMU's ``vfio-user-pci,addr=`` uses. The guest loads the stock ``spi-thunderx`` and
``at25`` modules of its own kernel package; at25 probes from that child node, and the guest
reads the EEPROM through sysfs and writes to it. The test compares both ways with the
model's array on the host.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from qemu_image import LOG_DIR, QemuImage

from platpass.firmware import devicetree
from platpass.host.simulated.board import board_dts_path
from platpass.reactor import EpollReactor
from platpass.vmm.qemu_pci import (
    PciUartRun,
    ServedPciFunction,
    busybox_initramfs,
    serve_pci_function,
    vfio_user_pci,
)

BOARD = board_dts_path("sim-pci-spi.dts")
SPI = "/soc@9000000/spi@60000"
SLOT = 3
MACHINE = ("-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg", "-m", "512")
BOOT_TIMEOUT = 240.0
#: What the guest writes (one write() of 48 bytes), and where: block 2 of 48 bytes, which
#: crosses the EEPROM's 32-byte page boundary at 128.
WRITTEN = b"platpass: these 48 bytes came from the guest OS."
WRITE_AT = 2 * len(WRITTEN)

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
insmod /lib/modules/spi-thunderx.ko && echo "@@MODULE spi-thunderx"
insmod /lib/modules/at25.ko && echo "@@MODULE at25"
for i in 1 2 3 4 5 6 7 8 9 10; do
  [ -e /sys/bus/spi/devices/spi0.0/eeprom ] && break; sleep 0.5
done
dmesg | grep -e spi-thunderx -e at25 | sed 's/^/@@DMESG /'
fn=/sys/bus/pci/devices/0000:00:0SLOT.0
echo "@@PCI $(cat $fn/vendor):$(cat $fn/device)"
echo "@@OFNODE $(cat /sys/bus/spi/devices/spi0.0/of_node/compatible)"
f=/sys/bus/spi/devices/spi0.0/eeprom
echo "@@SIZE $(wc -c < $f)"
echo "@@READ $(hexdump -v -e '1/1 "%02x"' $f)"
printf 'WRITTEN' | dd of=$f bs=LENGTH seek=2 conv=notrunc 2>/dev/null && echo "@@WROTE"
echo "@@READBACK $(dd if=$f bs=1 skip=WRITE_AT count=LENGTH 2>/dev/null)"
echo "@@END"
poweroff -f
""".replace("SLOT", str(SLOT)).replace("WRITTEN", WRITTEN.decode()) \
    .replace("WRITE_AT", str(WRITE_AT)).replace("LENGTH", str(len(WRITTEN)))


def _pattern(size: int) -> bytes:
    return bytes((i * 7 + 3) & 0xFF for i in range(size))


def _dump_virt_dtb(image: QemuImage, out: Path) -> None:
    qemu = image.qemu_arm64
    assert qemu is not None, "no qemu-system-aarch64 in the prepared root"
    argv = [*qemu.argv, *(a for d in qemu.data_dirs for a in ("-L", d)), *MACHINE,
            "-machine", f"dumpdtb={out}", "-display", "none"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and out.is_file(), done.stderr


@pytest.fixture
def served(qemu_image: QemuImage) -> Iterator[tuple[EpollReactor, ServedPciFunction, Path]]:
    reactor = EpollReactor()
    with tempfile.TemporaryDirectory(prefix="platpass-qemu-spi-") as tmp:
        socket = Path(tmp) / "spi.sock"
        served = serve_pci_function(reactor, devicetree.load_dts(BOARD), SPI, socket)
        try:
            yield reactor, served, Path(tmp)
        finally:
            served.close()
            reactor.close()


def test_guest_at25_probes_the_eeprom_behind_the_assigned_spi_controller(
        qemu_image: QemuImage, served) -> None:
    reactor, host, tmp = served
    ident = host.device.identity
    assert (ident.vendor, ident.device) == (0x177D, 0xA00B)   # ThunderX SPI, chosen by auto
    eeprom = host.model.targets[0]
    eeprom.data[:] = _pattern(eeprom.size)

    base = tmp / "virt.dtb"
    _dump_virt_dtb(qemu_image, base)
    guest_dtb = tmp / "guest.dtb"
    made = subprocess.run(
        [sys.executable, "-m", "platpass", "guest-dt", "--dts", str(BOARD), SPI,
         "--flavour", "qemu", "--base-dtb", str(base), "--pci-slot", f"{SPI}={SLOT:x}",
         "-o", str(guest_dtb)], capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr
    assert f'"addr": "{SLOT:#x}"' in made.stdout

    initrd = tmp / "spi.cpio.gz"
    initrd.write_bytes(busybox_initramfs(
        qemu_image.busybox_arm64, INIT, qemu_image.arm64_modules("spi-thunderx.ko", "at25.ko")))
    qemu = qemu_image.qemu_arm64
    assert qemu is not None
    device = vfio_user_pci(tmp / "spi.sock", f"{SLOT:#x}")
    argv = qemu.command(kernel=qemu_image.kernel_arm64, initrd=initrd, devices=[device],
                        machine=MACHINE, append="console=ttyAMA0 quiet panic=-1",
                        extra=("-dtb", str(guest_dtb)))
    run = PciUartRun(reactor, argv, LOG_DIR / "qemu-pci-spi.log")
    started = time.monotonic()
    run.start()
    assert run.wait(BOOT_TIMEOUT), f"guest did not finish in {BOOT_TIMEOUT}s:\n{run.tail()}"
    print(f"\nqemu-pci-spi: boot to poweroff {time.monotonic() - started:.1f}s, "
          f"log {run.log_path}")

    # The stock drivers bound: spi-thunderx to the function, at25 to the copied child.
    assert run.first("PCI") == "0x177d:0xa00b", run.tail()
    assert run.markers.get("MODULE") == ["spi-thunderx", "at25"], run.tail()
    dmesg = run.markers.get("DMESG", [])
    assert any("at25 spi0.0: 1 KByte at25 eeprom, pagesize 32" in line for line in dmesg), \
        dmesg
    assert run.first("OFNODE") == "atmel,at25"
    # Host -> guest: the guest read the model's whole array through the controller.
    assert run.first("SIZE") == str(eeprom.size)
    assert bytes.fromhex(run.first("READ") or "") == _pattern(eeprom.size)
    # Guest -> host: the bytes the guest wrote are in the model's array, page by page
    # (at25 splits the write at the page boundary; each page is one write cycle).
    assert run.first("WROTE") is not None, run.tail()
    assert bytes(eeprom.data[WRITE_AT:WRITE_AT + len(WRITTEN)]) == WRITTEN
    expected = bytearray(_pattern(eeprom.size))
    expected[WRITE_AT:WRITE_AT + len(WRITTEN)] = WRITTEN
    assert bytes(eeprom.data) == bytes(expected)   # nothing else changed
    first_page, last_page = WRITE_AT // 32, (WRITE_AT + len(WRITTEN) - 1) // 32
    assert eeprom.writes == last_page - first_page + 1
    assert run.first("READBACK") == WRITTEN.decode()
    assert run.first("END") is not None
