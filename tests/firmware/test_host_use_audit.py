"""The host-use rules audited against an independent labeller (``tests/hostuse_labeller.py``)
over real boards: no device the labeller finds the host using is called assignable, and at
least 80% of the simple devices it finds unused stay assignable.

"Simple" means what the issue's reviewers count: an available device node without children,
claimed by a driver of a non-watchdog family (a watchdog is opt-in by design), that the
labeller finds unused. The share is taken over those the verdict does not refuse for a reason
that has nothing to do with host use (a bus master, or a shared interrupt line or page range):
those refusals are checked elsewhere, and host use must not add to them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import hostuse_labeller
import real_dtbs
from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import load_dtb
from platpass.firmware.verdict import Verdict, assess_tree

_OTHER_REFUSALS = {Verdict.REFUSED_BUS_MASTER, Verdict.REFUSED_SHARED}


def audit(files: list[Path]) -> tuple[list[str], list[str], int, int]:
    """(unsafe: host-used yet assignable, over-refused: refused as a host consumer's supplier
    though the labeller finds no consumer, simple unused devices, of which assignable)."""
    registry = default_registry(plugins=False)
    unsafe: list[str] = []
    over: list[str] = []
    simple = simple_ok = 0
    for path in files:
        data = path.read_bytes()
        found = assess_tree(load_dtb(path), registry)
        blob = hostuse_labeller.Blob(data)
        used = hostuse_labeller.host_used(blob, [a.node.path for a in found])
        for a in found:
            where = f"{path.name}:{a.node.path}"
            if a.node.path in used:
                if a.verdict.assignable:
                    unsafe.append(f"{where}: {used[a.node.path]}")
                continue
            if any(e.rule == "host-consumer" for e in a.evidence):
                over.append(f"{where}: {a.explanation}")
            node = blob.nodes[a.node.path]
            family = a.driver.family if a.driver is not None else None
            if (family is None or family == "watchdog" or node.children
                    or not blob.available(node) or a.verdict in _OTHER_REFUSALS):
                continue
            simple += 1
            simple_ok += a.verdict.assignable
    return unsafe, over, simple, simple_ok


def _check(files: list[Path]) -> None:
    unsafe, over, simple, ok = audit(files)
    assert unsafe == []
    assert over == []
    assert simple > 0
    assert ok >= 0.8 * simple, f"{ok}/{simple} simple unused devices assignable"


def test_audit_on_the_shared_boards(shared_dtbs: list[Path]) -> None:
    _check(shared_dtbs)


def test_audit_on_every_dtb_of_the_kernel_package() -> None:
    try:
        files = real_dtbs.ensure_all(say=lambda line: print(line, file=sys.stderr))
    except RuntimeError as err:
        pytest.fail(f"all DTBs of the pinned package: {err}")
    assert len(files) == real_dtbs.ALL_COUNT
    _check(files)


# -------------------------------------------------- the labeller itself, on hand extracts

_EXTRACT = """/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    interrupt-parent = <&gic>;
    chosen { stdout-path = "serial0:115200n8"; };
    aliases { serial0 = &uart0; };
    gic: interrupt-controller@1000 { reg = <0x1000 0x100>; interrupt-controller;
        #interrupt-cells = <3>; };
    uart0: serial@2000 { compatible = "snps,dw-apb-uart"; reg = <0x2000 0x100>;
        interrupts = <0 1 4>; };
    pwm: pwm@3000 { compatible = "rockchip,rk3328-pwm"; reg = <0x3000 0x10>;
        #pwm-cells = <3>; };
    pwm_idle: pwm@4000 { compatible = "rockchip,rk3328-pwm"; reg = <0x4000 0x10>;
        #pwm-cells = <3>; };
    gpio0: gpio@5000 { compatible = "rockchip,gpio-bank"; reg = <0x5000 0x100>;
        gpio-controller; #gpio-cells = <2>; ngpios = <32>;
        gpio-line-names = "a", "b";
        hog { gpio-hog; gpios = <1 0>; output-high; }; };
    gpio1: gpio@6000 { compatible = "rockchip,gpio-bank"; reg = <0x6000 0x100>;
        gpio-controller; #gpio-cells = <2>; interrupt-controller;
        #interrupt-cells = <2>; };
    gpio2: gpio@7000 { compatible = "rockchip,gpio-bank"; reg = <0x7000 0x100>;
        gpio-controller; #gpio-cells = <2>; interrupt-controller;
        #interrupt-cells = <2>; };
    bus { interrupt-parent = <&gpio2>; };
    vdd_cpu { compatible = "pwm-regulator"; pwms = <&pwm 0 25000 1>; };
    keys { compatible = "gpio-keys"; status = "disabled";
        key { gpios = <&gpio1 3 0>; }; };
    fan: fan { #cooling-cells = <2>; };
    thermal-zones { z { cooling-maps { m { cooling-device = <&fan 0 1>; }; }; }; };
};
"""


@pytest.fixture(scope="module")
def extract(dtc: str, tmp_path_factory: pytest.TempPathFactory) -> hostuse_labeller.Blob:
    out = tmp_path_factory.mktemp("labeller") / "x.dtb"
    subprocess.run([dtc, "-I", "dts", "-O", "dtb", "-o", str(out), "-"], input=_EXTRACT,
                   text=True, check=True, capture_output=True)
    return hostuse_labeller.Blob(out.read_bytes())


def test_labeller_on_a_hand_extract(extract: hostuse_labeller.Blob) -> None:
    devices = ["/serial@2000", "/pwm@3000", "/pwm@4000", "/gpio@5000", "/gpio@6000", "/fan",
               "/gpio@7000"]
    used = hostuse_labeller.host_used(extract, devices)
    # the console, a pwm-regulator's PWM and a cooling device are used; a hog (its own
    # bank), ngpios / gpio-line-names, a disabled consumer and an idle PWM are not
    assert used == {
        "/serial@2000": "/chosen stdout-path -> /serial@2000",
        "/pwm@3000": "/vdd_cpu pwms -> /pwm@3000",
        "/fan": "/thermal-zones/z/cooling-maps/m cooling-device -> /fan",
        # a bare interrupt-parent (fw_devlink links it; the bus's children inherit it)
        "/gpio@7000": "/bus interrupt-parent -> /gpio@7000",
    }


def test_labeller_inherits_the_interrupt_parent(extract: hostuse_labeller.Blob) -> None:
    serial = extract.nodes["/serial@2000"]
    assert [(prop, node.path) for prop, node in extract.suppliers(serial)] == \
        [("interrupts", "/interrupt-controller@1000")]
