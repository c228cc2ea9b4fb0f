"""The host-in-use rule (DESIGN.md section 3, rule 5) on small trees, with exact evidence."""

from __future__ import annotations

import pytest

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import DriverRegistry
from platpass.firmware.consumers import Reference, references
from platpass.firmware.devicetree import load_dts_source
from platpass.firmware.verdict import Assessment, Evidence, Verdict, assess_tree


def _driver(compatible: str, family: str) -> type[PlatformDriver]:
    return type(f"Test{family.title()}", (PlatformDriver,), {
        "name": f"test-{family}", "compatibles": (compatible,), "family": family,
        "evidence": "test block: registers only"})


REGISTRY = DriverRegistry([_driver("test,gpio", "gpio"), _driver("test,i2c", "i2c"),
                           _driver("test,pwm", "pwm"), _driver("test,uart", "uart")])

HEAD = """/dts-v1/;
/ {
    #address-cells = <1>;
    #size-cells = <1>;
    interrupt-parent = <&gic>;
    gic: interrupt-controller@1000000 {
        compatible = "arm,gic-400"; #interrupt-cells = <3>; interrupt-controller;
        reg = <0x1000000 0x1000>, <0x1002000 0x2000>;
    };
"""


def tree(body: str):
    return load_dts_source(HEAD + body + "\n};\n")


def assess(body: str, **kwargs: object) -> dict[str, Assessment]:
    return {a.node.path: a for a in assess_tree(tree(body), REGISTRY, **kwargs)}


GPIO_AND_I2C = """
    gpio: gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x1000>;
                       interrupts = <0 5 4>; gpio-controller; #gpio-cells = <2>;
                       interrupt-controller; #interrupt-cells = <2>; };
    i2c@20000 { compatible = "test,i2c"; reg = <0x20000 0x1000>; interrupts = <0 6 4>;
                #address-cells = <1>; #size-cells = <0>;
        pmic@1b { compatible = "acme,pmic"; reg = <0x1b>;
                  interrupt-parent = <&gpio>; interrupts = <7 8>;
            regulators { vdd_cpu: buck1 { regulator-name = "vdd_cpu"; }; };
        };
    };
    cpus { #address-cells = <1>; #size-cells = <0>;
        cpu@0 { device_type = "cpu"; reg = <0>; cpu-supply = <&vdd_cpu>; }; };
"""


def test_each_outside_consumer_is_named() -> None:
    result = assess(GPIO_AND_I2C)
    gpio = result["/gpio@10000"]
    assert gpio.verdict is Verdict.REFUSED_HOST_IN_USE
    assert gpio.evidence == (Evidence(
        "host-consumer", "", "/i2c@20000/pmic@1b interrupts -> /gpio@10000"),)
    assert str(gpio.evidence[0]) == \
        "host-consumer: /i2c@20000/pmic@1b interrupts -> /gpio@10000"
    assert gpio.consumers == (Reference("/i2c@20000/pmic@1b", "interrupts", "/gpio@10000"),)
    assert not gpio.may_assign
    i2c = result["/i2c@20000"]
    assert i2c.verdict is Verdict.REFUSED_HOST_IN_USE
    assert Evidence("host-consumer", "",
                    "/cpus/cpu@0 cpu-supply -> /i2c@20000/pmic@1b/regulators/buck1") \
        in i2c.evidence
    # the PMIC's interrupt comes from a bank that stays with the host
    assert Evidence("needs-host-resource", "",
                    "/i2c@20000/pmic@1b interrupts -> /gpio@10000: outside the subtree; "
                    "assign it together with /gpio@10000, or not at all") in i2c.evidence


def test_disabled_consumers_do_not_count_and_inside_references_are_fine() -> None:
    result = assess("""
    gpio: gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x1000>;
                       interrupts = <0 5 4>; gpio-controller; #gpio-cells = <2>; };
    keys { compatible = "gpio-keys"; status = "disabled";
           button { gpios = <&gpio 3 0>; }; };
    bus { compatible = "simple-bus"; #address-cells = <1>; #size-cells = <1>; ranges;
          status = "disabled";
          led { gpios = <&gpio 4 0>; }; };
    i2c@20000 { compatible = "test,i2c"; reg = <0x20000 0x1000>; interrupts = <0 6 4>;
                #address-cells = <1>; #size-cells = <0>;
        mux: mux@70 { compatible = "acme,mux"; reg = <0x70>; #mux-control-cells = <0>; };
        sensor@48 { compatible = "acme,sensor"; reg = <0x48>; mux-controls = <&mux>; };
    };
    """)
    assert result["/gpio@10000"].verdict is Verdict.ASSIGNABLE
    assert result["/gpio@10000"].consumers == ()
    assert result["/i2c@20000"].verdict is Verdict.ASSIGNABLE


def test_phandle_lists_are_walked_with_the_providers_cells() -> None:
    # cell values 1 and 0x30 are the phandles of other devices: only real phandles count
    t = tree("""
    gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x1000>; interrupts = <0 5 4>;
                 phandle = <1>; gpio-controller; #gpio-cells = <2>; };
    gpio@30000 { compatible = "test,gpio"; reg = <0x30000 0x1000>; interrupts = <0 7 4>;
                 phandle = <0x30>; gpio-controller; #gpio-cells = <2>; };
    pwm@20000 { compatible = "test,pwm"; reg = <0x20000 0x1000>; phandle = <0x20>;
                #pwm-cells = <3>; };
    backlight { compatible = "pwm-backlight"; pwms = <0x20 1 0x30 0>;
                enable-gpios = <0x30 1 0>, <0>, <0x30 0x1 0x1>;
                snps,nr-gpios = <1>; };
    hog-bank@40000 { compatible = "test,gpio"; reg = <0x40000 0x1000>; interrupts = <0 8 4>;
                     gpio-controller; #gpio-cells = <2>;
                     hog { gpio-hog; gpios = <1 0>; output-high; }; };
    """)
    found = {(r.consumer, r.property, r.supplier) for r in references(t.raw)
             if r.property != "interrupts"}
    assert found == {("/backlight", "pwms", "/pwm@20000"),
                     ("/backlight", "enable-gpios", "/gpio@30000")}
    result = {a.node.path: a for a in assess_tree(t, REGISTRY)}
    assert result["/gpio@10000"].verdict is Verdict.ASSIGNABLE
    assert result["/hog-bank@40000"].consumers == ()


def test_console_through_an_alias_is_a_consumer() -> None:
    result = assess("""
    aliases { serial0 = "/serial@10000"; };
    chosen { stdout-path = "serial0:115200n8"; };
    serial@10000 { compatible = "test,uart"; reg = <0x10000 0x1000>; interrupts = <0 5 4>; };
    serial@20000 { compatible = "test,uart"; reg = <0x20000 0x1000>; interrupts = <0 6 4>; };
    """)
    assert result["/serial@10000"].evidence == (Evidence(
        "host-consumer", "", "/chosen stdout-path -> /serial@10000"),)
    assert result["/serial@20000"].verdict is Verdict.ASSIGNABLE


def test_a_co_assigned_provider_satisfies_the_child() -> None:
    body = """
    gpio: gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x1000>;
                       interrupts = <0 5 4>; gpio-controller; #gpio-cells = <2>;
                       interrupt-controller; #interrupt-cells = <2>; };
    i2c@20000 { compatible = "test,i2c"; reg = <0x20000 0x1000>; interrupts = <0 6 4>;
                #address-cells = <1>; #size-cells = <0>;
        rtc@68 { compatible = "acme,rtc"; reg = <0x68>; vcc-supply = <&vcc>; clocks = <&osc>;
                 interrupts-extended = <&gpio 3 8>; };
    };
    vcc: regulator-vcc { compatible = "regulator-fixed"; regulator-name = "vcc"; };
    osc: oscillator { compatible = "fixed-clock"; #clock-cells = <0>;
                      clock-frequency = <32768>; };
    """
    alone = assess(body)
    assert alone["/i2c@20000"].verdict is Verdict.REFUSED_HOST_IN_USE
    assert alone["/i2c@20000"].evidence == (Evidence(
        "needs-host-resource", "",
        "/i2c@20000/rtc@68 interrupts-extended -> /gpio@10000: outside the subtree; assign "
        "it together with /gpio@10000, or not at all"),)
    # the RTC uses the bank: the bank has a consumer outside its own subtree
    assert alone["/gpio@10000"].verdict is Verdict.REFUSED_HOST_IN_USE
    together = assess(body, groups=[["/i2c@20000", "/gpio@10000"]])
    # supplies and clocks stay with the host (the guest's tree drops them)
    assert together["/i2c@20000"].verdict is Verdict.ASSIGNABLE
    assert together["/gpio@10000"].verdict is Verdict.ASSIGNABLE


def test_verdict_order_bus_master_shared_host_in_use_unknown() -> None:
    result = assess("""
    gpio: gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x1000>;
                       interrupts = <0 5 4>; gpio-controller; #gpio-cells = <2>; };
    gpio2: gpio@20000 { compatible = "test,gpio"; reg = <0x20000 0x1000>;
                        interrupts = <0 5 4>; gpio-controller; #gpio-cells = <2>; };
    thing: thing@30000 { compatible = "acme,thing"; reg = <0x30000 0x1000>;
                         #pwm-cells = <1>; };
    usb: usb@40000 { compatible = "test,gpio"; reg = <0x40000 0x1000>; dma-coherent;
                     gpio-controller; #gpio-cells = <2>; };
    leds { compatible = "gpio-leds";
           a { gpios = <&gpio 1 0>; }; b { gpios = <&gpio2 1 0>; };
           c { pwms = <&thing 0>; }; d { gpios = <&usb 0 0>; }; };
    """)
    assert result["/usb@40000"].verdict is Verdict.REFUSED_BUS_MASTER
    assert result["/usb@40000"].consumers  # named all the same
    assert result["/gpio@10000"].verdict is Verdict.REFUSED_SHARED
    assert result["/thing@30000"].verdict is Verdict.REFUSED_HOST_IN_USE


def test_overrides_waive_per_device_and_per_rule() -> None:
    result = assess(GPIO_AND_I2C, overrides={"/gpio@10000": {"host-consumer"},
                                             "/i2c@20000": {"host-consumer"}})
    gpio = result["/gpio@10000"]
    assert gpio.verdict is Verdict.ASSIGNABLE
    assert gpio.waived == (Evidence(
        "override", "host-consumer",
        "waived by the user: host-consumer: /i2c@20000/pmic@1b interrupts -> /gpio@10000"),)
    # the needs-host-resource finding was not waived
    i2c = result["/i2c@20000"]
    assert i2c.verdict is Verdict.REFUSED_HOST_IN_USE
    assert [e.rule for e in i2c.evidence if e.rule != "override"] == [
        "needs-host-resource", "host-critical-child"]
    with pytest.raises(ValueError, match="shared-interrupt cannot be waived"):
        assess(GPIO_AND_I2C, overrides={"/gpio@10000": {"shared-interrupt"}})


class _Watchdog(PlatformDriver):
    name = "test-wdt"
    compatibles = ("test,wdt",)
    family = "watchdog"
    evidence = "test watchdog: registers only"


class _StuckWatchdog(_Watchdog):
    name = "test-stuck-wdt"
    compatibles = ("test,stuck-wdt",)
    unstoppable = "the enable bit is write-once"


def test_host_critical_children_enabled_or_not() -> None:
    result = assess("""
    spi@10000 { compatible = "test,i2c"; reg = <0x10000 0x1000>; interrupts = <0 5 4>;
                #address-cells = <1>; #size-cells = <0>;
        flash@0 { compatible = "jedec,spi-nor"; reg = <0>; status = "disabled"; }; };
    spi@20000 { compatible = "test,i2c"; reg = <0x20000 0x1000>; interrupts = <0 6 4>;
                #address-cells = <1>; #size-cells = <0>;
        tpm@0 { compatible = "infineon,slb9670", "tcg,tpm_tis-spi"; reg = <0>; }; };
    i2c@30000 { compatible = "test,i2c"; reg = <0x30000 0x1000>; interrupts = <0 7 4>;
                #address-cells = <1>; #size-cells = <0>;
        eeprom@50 { compatible = "atmel,24c02"; reg = <0x50>;
            partitions { compatible = "fixed-partitions"; }; }; };
    gpio@40000 { compatible = "test,gpio"; reg = <0x40000 0x1000>; interrupts = <0 8 4>;
                 gpio-controller; #gpio-cells = <2>;
        phy-reset-hog { gpio-hog; gpios = <3 0>; output-high; }; };
    i2c@50000 { compatible = "test,i2c"; reg = <0x50000 0x1000>; interrupts = <0 9 4>;
                #address-cells = <1>; #size-cells = <0>;
        eeprom@50 { compatible = "atmel,24c02"; reg = <0x50>; }; };
    """)
    assert result["/spi@10000"].evidence == (Evidence(
        "host-critical-child", "",
        "/spi@10000/flash@0: boot or firmware storage (jedec,spi-nor)"),)
    assert result["/spi@20000"].evidence == (Evidence(
        "host-critical-child", "",
        "/spi@20000/tpm@0: TPM or secure element (infineon,slb9670, tcg,tpm_tis-spi)"),)
    assert Evidence("host-critical-child", "",
                    "/i2c@30000/eeprom@50/partitions: boot or firmware storage "
                    "(fixed-partitions)") in result["/i2c@30000"].evidence
    assert result["/gpio@40000"].evidence == (Evidence(
        "host-critical-child", "",
        "/gpio@40000/phy-reset-hog: a line the host configured and holds (gpio-hog)"),)
    assert result["/i2c@50000"].verdict is Verdict.ASSIGNABLE
    for path in ("/spi@10000", "/spi@20000", "/i2c@30000", "/gpio@40000"):
        assert result[path].verdict is Verdict.REFUSED_HOST_IN_USE


def test_pmic_and_always_on_regulators_are_host_critical() -> None:
    result = assess(GPIO_AND_I2C)
    assert Evidence("host-critical-child", "",
                    "/i2c@20000/pmic@1b: PMIC or regulator (acme,pmic)") \
        in result["/i2c@20000"].evidence


def test_a_watchdog_goes_only_on_opt_in_and_never_when_it_cannot_be_stopped() -> None:
    registry = DriverRegistry([_Watchdog, _StuckWatchdog])
    t = tree("""
    watchdog@10000 { compatible = "test,wdt"; reg = <0x10000 0x1000>; interrupts = <0 5 4>; };
    watchdog@20000 { compatible = "test,stuck-wdt"; reg = <0x20000 0x1000>;
                     interrupts = <0 6 4>; };
    watchdog@30000 { compatible = "test,wdt"; reg = <0x30000 0x1000>; interrupts = <0 7 4>;
                     platpass,reset-output-unconnected; };
    """)
    result = {a.node.path: a for a in assess_tree(t, registry)}
    wdt = result["/watchdog@10000"]
    assert wdt.verdict is Verdict.REFUSED_HOST_IN_USE
    assert wdt.evidence == (Evidence(
        "system-reset", "compatible",
        "test-wdt (watchdog) can reset the whole system: assigned only when the user opts in "
        "for this device (--override /watchdog@10000=system-reset)"),)
    stuck = result["/watchdog@20000"]
    assert stuck.evidence == (Evidence(
        "unstoppable-reset", "compatible",
        "test-stuck-wdt: the enable bit is write-once; a guest that starts it leaves it "
        "running after the VM exits, and it resets the host"),)
    assert result["/watchdog@30000"].verdict is Verdict.ASSIGNABLE
    opted = {a.node.path: a for a in assess_tree(
        t, registry, overrides={"/watchdog@10000": {"system-reset"},
                                "/watchdog@20000": {"system-reset"}})}
    assert opted["/watchdog@10000"].verdict is Verdict.ASSIGNABLE
    assert [e.rule for e in opted["/watchdog@10000"].waived] == ["override"]
    assert opted["/watchdog@20000"].verdict is Verdict.REFUSED_HOST_IN_USE
    with pytest.raises(ValueError, match="unstoppable-reset cannot be waived"):
        assess_tree(t, registry, overrides={"/watchdog@20000": {"unstoppable-reset"}})


def test_builtin_unstoppable_watchdogs() -> None:
    from platpass.drivers.registry import default_registry

    registry = default_registry(plugins=False)
    for compatible in ("fsl,imx21-wdt", "ti,j7-rti-wdt", "snps,dw-wdt"):
        assert registry.match([compatible]).unstoppable, compatible
    t = tree("""
    rst: reset-controller { #reset-cells = <1>; };
    watchdog@10000 { compatible = "snps,dw-wdt"; reg = <0x10000 0x1000>;
                     interrupts = <0 5 4>; };
    watchdog@20000 { compatible = "snps,dw-wdt"; reg = <0x20000 0x1000>;
                     interrupts = <0 6 4>; resets = <&rst 1>; };
    """)
    result = {a.node.path: a for a in assess_tree(t, registry)}
    assert [e.rule for e in result["/watchdog@10000"].evidence] == ["unstoppable-reset"]
    assert [e.rule for e in result["/watchdog@20000"].evidence] == ["system-reset"]


def test_a_child_wired_to_the_root_interrupt_controller_is_not_told_to_co_assign_it() -> None:
    """An RTC behind an I2C controller (or mux) whose interrupt goes straight to the GIC
    (ls1043a-qds): the GIC can never go to a guest, so the evidence says what is missing
    instead of advising a co-assignment nobody can make."""
    result = assess("""
    i2c@20000 { compatible = "test,i2c"; reg = <0x20000 0x1000>; interrupts = <0 6 4>;
                #address-cells = <1>; #size-cells = <0>;
        rtc@51 { compatible = "nxp,pcf2129"; reg = <0x51>; interrupts = <0 150 4>; };
    };
    """)
    i2c = result["/i2c@20000"]
    assert i2c.verdict is Verdict.REFUSED_HOST_IN_USE
    (evidence,) = i2c.evidence
    assert evidence.rule == "needs-host-resource"
    assert "together with" not in evidence.value
    assert evidence.value.endswith("a line of the host's root interrupt controller, which "
                                   "no guest can take; platpass forwards only the device's "
                                   "own interrupts, not a child's")
