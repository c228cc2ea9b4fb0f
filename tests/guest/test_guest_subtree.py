"""A device takes its subtree to the guest: children copied, phandles renumbered, references
to host-only providers dropped, and a real dtc (every check on) compiles the result."""

from __future__ import annotations

import libfdt

from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import load_dts_source
from platpass.guest.dtc import compile_dts
from platpass.guest.dts import header, render_nodes
from platpass.guest.flavours import Flavour
from platpass.guest.placement import new_record
from platpass.guest.plan import plan_guest
from platpass.guest.subtree import guest_children
from platpass.guest.transform import ClockRates

HOST = """/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    interrupt-parent = <&gic>;
    gic: interrupt-controller@1000000 { compatible = "arm,gic-400"; #interrupt-cells = <3>;
        interrupt-controller; reg = <0x1000000 0x1000>, <0x1002000 0x2000>; };
    osc: oscillator { compatible = "fixed-clock"; #clock-cells = <0>;
                      clock-frequency = <24000000>; };
    vcc: regulator-vcc { compatible = "regulator-fixed"; regulator-name = "vcc"; };
    gpio: gpio@ff000000 { compatible = "snps,dw-apb-gpio"; reg = <0xff000000 0x1000>;
        #address-cells = <1>; #size-cells = <0>;
        port: gpio-port@0 { compatible = "snps,dw-apb-gpio-port"; reg = <0>;
            gpio-controller; #gpio-cells = <2>; interrupt-controller;
            #interrupt-cells = <2>; interrupts = <0 40 4>; }; };
    i2c@ff110000 { compatible = "snps,designware-i2c"; reg = <0xff110000 0x1000>;
        interrupts = <0 33 4>; clocks = <&osc>; #address-cells = <1>; #size-cells = <0>;
        expander: gpio@20 { compatible = "nxp,pca9555"; reg = <0x20>; gpio-controller;
            #gpio-cells = <2>; interrupt-controller; #interrupt-cells = <2>;
            vcc-supply = <&vcc>; };
        eeprom@50 { compatible = "atmel,24c02"; reg = <0x50>; pagesize = <8>;
            wp-gpios = <&expander 3 0>; };
        rtc@68 { compatible = "dallas,ds1339"; reg = <0x68>;
            interrupt-parent = <&expander>; interrupts = <5 8>; interrupt-names = "alarm";
            clocks = <&osc>; clock-names = "xtal"; };
        sensor@48 { compatible = "ti,tmp102"; reg = <0x48>;
            interrupts-extended = <&port 7 8>; };
    };
};
"""


def test_children_travel_with_local_labels_and_host_references_dropped() -> None:
    tree = load_dts_source(HOST)
    nodes, dropped = guest_children(tree.raw, "/i2c@ff110000", "i2c_ff110000")
    assert [n.name for n in nodes] == ["gpio@20", "eeprom@50", "rtc@68", "sensor@48"]
    expander, _eeprom, rtc, _sensor = nodes
    assert expander.label == "i2c_ff110000_gpio_20"
    assert "phandle" not in expander.properties
    text = render_nodes(nodes)
    assert "wp-gpios = <&i2c_ff110000_gpio_20 0x3 0x0>;" in text
    assert "interrupt-parent = <&i2c_ff110000_gpio_20>;" in text
    assert dropped == {
        "gpio@20:vcc-supply": "host-only provider",
        "rtc@68:clocks": "host-only provider",
        "rtc@68:clock-names": "names the dropped clocks",
        "sensor@48:interrupts-extended": "refers outside what the guest gets (waived)",
    }
    assert "interrupt-names" in rtc.properties
    # the GPIO port is assigned too: the sensor's interrupt follows it
    nodes, dropped = guest_children(tree.raw, "/i2c@ff110000", "i2c_ff110000",
                                    {"/gpio@ff000000": "gpio_ff000000"})
    assert "interrupts-extended = <&gpio_ff000000_gpio_port_0 0x7 0x8>;" \
        in render_nodes(nodes)  # the label the bank's own subtree gives its port
    assert "sensor@48:interrupts-extended" not in dropped
    bank, _ = guest_children(tree.raw, "/gpio@ff000000", "gpio_ff000000")
    assert bank[0].label == "gpio_ff000000_gpio_port_0"


def test_plan_guest_nests_the_subtree_and_dtc_compiles_it() -> None:
    tree = load_dts_source(HOST)
    registry = default_registry(plugins=False)
    node = tree.node("/i2c@ff110000")
    driver = registry.match(node.compatible)(node)
    guests, _ = plan_guest([(node, driver)], Flavour.CROSVM, new_record(),
                           rates=ClockRates(), host_tree=tree.raw)
    (guest,) = guests
    assert [c.name for c in guest.node.children] == ["gpio@20", "eeprom@50", "rtc@68",
                                                     "sensor@48"]
    assert guest.dropped["rtc@68:clocks"] == "host-only provider"
    nodes = [guest.node, *(c.node() for c in guest.clocks)]
    source = (header([]) + "/ {\n\t#address-cells = <2>;\n\t#size-cells = <2>;\n"
              "\tinterrupt-parent = <&gic>;\n\tgic: gic {\n\t\tinterrupt-controller;\n"
              "\t\t#interrupt-cells = <3>;\n\t\t#address-cells = <0>;\n\t};\n\n"
              + render_nodes(nodes) + "\n};\n")
    fdt = libfdt.FdtRo(compile_dts(source))
    eeprom = fdt.path_offset(f"/{guest.node.name}/eeprom@50")
    expander = fdt.path_offset(f"/{guest.node.name}/gpio@20")
    wp = bytes(fdt.getprop(eeprom, "wp-gpios"))
    assert int.from_bytes(wp[:4], "big") == fdt.get_phandle(expander)
