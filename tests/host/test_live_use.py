"""The running kernel's view of who uses a device, read from a fake sysfs tree, and the
verdict it feeds."""

from __future__ import annotations

import os
from pathlib import Path

from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import load_dts_source
from platpass.firmware.verdict import Evidence, Verdict, assess_tree
from platpass.host.live_use import live_host_use

TREE = """/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    interrupt-parent = <&gic>;
    gic: interrupt-controller@1000000 { compatible = "arm,gic-400"; #interrupt-cells = <3>;
        interrupt-controller; reg = <0x1000000 0x1000>, <0x1002000 0x2000>; };
    i2c@ff110000 { compatible = "snps,designware-i2c"; reg = <0xff110000 0x1000>;
        interrupts = <0 33 4>; #address-cells = <1>; #size-cells = <0>;
        eeprom@50 { compatible = "atmel,24c02"; reg = <0x50>; }; };
    i2c@ff120000 { compatible = "snps,designware-i2c"; reg = <0xff120000 0x1000>;
        interrupts = <0 34 4>; #address-cells = <1>; #size-cells = <0>; };
    gpio@ff130000 { compatible = "snps,dw-apb-gpio"; reg = <0xff130000 0x1000>; };
    keys { compatible = "gpio-keys"; };
};
"""


def _device(sys: Path, name: str, node: str, driver: str | None = None) -> Path:
    device = sys / "devices" / "platform" / name
    device.mkdir(parents=True)
    base = sys / "firmware" / "devicetree" / "base"
    (base / node.strip("/")).mkdir(parents=True, exist_ok=True)
    os.symlink(base / node.strip("/"), device / "of_node")
    bus = sys / "bus" / "platform" / "devices"
    bus.mkdir(parents=True, exist_ok=True)
    os.symlink(device, bus / name)
    if driver is not None:
        (sys / "bus" / "platform" / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        os.symlink(sys / "bus" / "platform" / "drivers" / driver, device / "driver")
    return device


def fake_sysfs(sys: Path) -> None:
    i2c = _device(sys, "ff110000.i2c", "/i2c@ff110000", "i2c_designware")
    _device(sys, "0-0050", "/i2c@ff110000/eeprom@50", "at24")
    _device(sys, "ff120000.i2c", "/i2c@ff120000", "i2c_designware")
    gpio = _device(sys, "ff130000.gpio", "/gpio@ff130000", "dwapb-gpio")
    keys = _device(sys, "keys", "/keys", "gpio-keys")
    links = sys / "class" / "devlink"
    for supplier, consumer, status in ((gpio, keys, "active"), (i2c, keys, "dormant")):
        link = links / f"platform:{supplier.name}--platform:{consumer.name}"
        link.mkdir(parents=True)
        os.symlink(supplier, link / "supplier")
        os.symlink(consumer, link / "consumer")
        (link / "status").write_text(status + "\n")
    mtd = sys / "class" / "mtd" / "mtd0"
    mtd.mkdir(parents=True)
    os.symlink(sys / "devices" / "platform" / "0-0050", mtd / "device")
    (mtd / "name").write_text("u-boot\n")


def test_live_facts_and_the_verdict_they_give(tmp_path: Path) -> None:
    fake_sysfs(tmp_path)
    paths = ["/i2c@ff110000", "/i2c@ff120000", "/gpio@ff130000"]
    facts = live_host_use(paths, root=tmp_path)
    assert facts == {
        "/gpio@ff130000": [(
            "live-consumer",
            "platform:ff130000.gpio--platform:keys (active): /keys uses /gpio@ff130000 "
            "(/sys/class/devlink)")],
        "/i2c@ff110000": [
            ("live-child-driver",
             "/i2c@ff110000/eeprom@50 is bound to the host driver at24 (0-0050)"),
            ("live-mtd", "/i2c@ff110000/eeprom@50: /sys/class/mtd/mtd0 'u-boot'")],
    }
    tree = load_dts_source(TREE)
    result = {a.node.path: a for a in assess_tree(tree, default_registry(plugins=False),
                                                   live=facts)}
    assert result["/i2c@ff120000"].may_assign
    gpio = result["/gpio@ff130000"]
    assert gpio.verdict is Verdict.REFUSED_HOST_IN_USE
    assert gpio.evidence == (Evidence("live-consumer", "", facts["/gpio@ff130000"][0][1]),)
    assert result["/i2c@ff110000"].verdict is Verdict.REFUSED_HOST_IN_USE
    waived = {a.node.path: a for a in assess_tree(
        tree, default_registry(plugins=False), live=facts,
        overrides={"/gpio@ff130000": {"live-consumer"}})}
    assert waived["/gpio@ff130000"].may_assign


def test_nothing_readable_means_no_facts(tmp_path: Path) -> None:
    assert live_host_use(["/i2c@ff110000"], root=tmp_path) == {}
