"""A real Linux guest binds its driver to a node ``platpass guest-dt`` generated.

The host tree is QEMU ``virt``'s own DTB (the harness dumps it for its machine options); its
PL031 goes through the whole transform (``clocks`` now point at a generated fixed clock) and
``guest-dt --flavour qemu`` places it at QEMU's own PL031 address and SPI (0x9010000, SPI 2)
in a copy of that DTB from which QEMU's node is removed, so QEMU's emulated PL031 answers
where the generated node says. (A PL031 from a board tree does not fit: Juno's is described
as a 64 KiB window, and the amba bus reads the primecell ID from the last bytes of the
window, where QEMU's 4 KiB PL031 has nothing.) Debian's arm64 kernel (the real-kernel
harness's image, the session's ``arm64_image``; ``rtc-pl031`` is built in) boots with the
merged DTB, and the guest
reports whether ``rtc-pl031`` probed our node and registered rtc0.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from platpass.cli import main

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "tests" / "integration" / "kernel"

#: Runs as /tests/guest_rtc.py in the guest: report what the kernel made of our node.
GUEST_SCRIPT = r'''
import json, os, subprocess
def check(name, ok, **detail):
    print("@@CHECK " + json.dumps({"name": name, "ok": bool(ok), "detail": detail}), flush=True)
def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default
dev = "/sys/bus/amba/devices/9010000.pl031"
link = dev + "/driver"
driver = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
check("guest.amba_device_bound", driver == "rtc-pl031", driver=driver,
      amba=sorted(os.listdir("/sys/bus/amba/devices")))
name = (read("/sys/class/rtc/rtc0/name") or "").strip()
check("guest.rtc0", "pl031" in name, rtc_name=name)
since = (read("/sys/class/rtc/rtc0/since_epoch") or "0").strip()
check("guest.rtc0_ticks", int(since) > 1_600_000_000, since_epoch=since)
dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
lines = [l for l in dmesg.splitlines() if "pl031" in l or "rtc0" in l]
check("guest.dmesg", any("registered as rtc0" in l for l in lines), lines=lines)
clk = "/proc/device-tree/clock-pl031-9010000-apb-pclk"
check("guest.generated_clock", read(clk + "/compatible") == "fixed-clock\0",
      nodes=sorted(os.listdir("/proc/device-tree")))
'''


def _harness():
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 is not installed (scripts/install --test)")
    sys.path.insert(0, str(HARNESS))
    try:
        import kernel_harness
    finally:
        sys.path.remove(str(HARNESS))
    return kernel_harness


def _boot_and_check(kh, image, dtb: Path) -> None:
    """Boot the kernel with ``dtb``; every guest check must report ok."""
    work = Path(tempfile.mkdtemp(prefix="platpass-guest-boot-"))
    try:
        initrd = work / "initrd.gz"
        initrd.write_bytes(image.base_initramfs.read_bytes() + kh.overlay_cpio(
            {"tests/guest_rtc.py": GUEST_SCRIPT.encode()}))
        cmd = ["qemu-system-aarch64", *kh.QEMU_MACHINE, "-kernel", str(image.kernel),
               "-initrd", str(initrd), "-dtb", str(dtb), "-serial", "stdio",
               "-monitor", "none", "-no-reboot", "-append",
               "console=ttyAMA0 rdinit=/init quiet panic=-1 platpass.scenario=guest_rtc"]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=180)
            console = done.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as err:
            console = (err.stdout or b"").decode(errors="replace")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    checks = {}
    for match in re.finditer(r"@@CHECK (\{.*\})", console):
        record = json.loads(match.group(1))
        checks[record["name"]] = record
    tail = "\n".join(console.splitlines()[-40:])
    for name in ("guest.amba_device_bound", "guest.rtc0", "guest.rtc0_ticks", "guest.dmesg",
                 "guest.generated_clock"):
        assert name in checks, f"{name} not reported; console tail:\n{tail}"
        assert checks[name]["ok"], json.dumps(checks[name], indent=1)
    assert any("rtc-pl031 9010000.pl031: registered as rtc0" in line
               for line in checks["guest.dmesg"]["detail"]["lines"])


@pytest.mark.kernel
def test_linux_rtc_pl031_binds_to_generated_node(tmp_path: Path, capsys, arm64_image) -> None:
    kh = _harness()
    image = arm64_image
    merged = tmp_path / "guest.dtb"
    record = tmp_path / "placement.json"
    virt = str(image.dtb("amba"))
    assert main(["guest-dt", "/pl031@9010000", "--dtb", virt, "--flavour", "qemu",
                 "--base-dtb", virt, "--remove", "/pl031@9010000",
                 "--mmio-window", "0x9010000:0x1000", "--spi-pool", "2:1",
                 "--placement", str(record), "-o", str(merged)]) == 0
    capsys.readouterr()
    placed = json.loads(record.read_text())["devices"][0]
    assert placed["regions"][0]["guest_address"] == 0x9010000
    assert placed["interrupts"][0]["guest_spi"] == 2
    _boot_and_check(kh, image, merged)


@pytest.mark.kernel
def test_linux_rtc_pl031_binds_through_the_crosvm_overlay(tmp_path: Path, capsys,
                                                          arm64_image) -> None:
    """The crosvm overlay, applied by fdtoverlay to QEMU's DTB with QEMU's own PL031 node
    deleted first (fdtput -r): the node inherits the root's interrupt parent and its clock
    comes through __local_fixups__, as it would in crosvm."""
    kh = _harness()
    for tool in ("fdtoverlay", "fdtput"):
        assert shutil.which(tool), f"{tool} missing (device-tree-compiler)"
    image = arm64_image
    virt = str(image.dtb("amba"))
    overlay = tmp_path / "rtc.dtbo"
    assert main(["guest-dt", "/pl031@9010000", "--dtb", virt, "--flavour", "crosvm",
                 "--mmio-window", "0x9010000:0x1000", "--spi-pool", "2:1",
                 "-o", str(overlay)]) == 0
    assert "dt-symbol=pl031_9010000" in capsys.readouterr().out
    base = tmp_path / "base.dtb"
    shutil.copy(virt, base)
    subprocess.run(["fdtput", "-r", str(base), "/pl031@9010000"], check=True, timeout=30)
    merged = tmp_path / "guest.dtb"
    subprocess.run(["fdtoverlay", "-i", str(base), "-o", str(merged), str(overlay)],
                   check=True, capture_output=True, timeout=30)
    _boot_and_check(kh, image, merged)
