"""Resolution rules on small inline device trees compiled by the real dtc."""

from __future__ import annotations

import pytest

from platpass.errors import DeviceTreeLoadError, NodeError
from platpass.firmware.devicetree import load_blob, load_dts, load_dts_source
from platpass.firmware.model import Clock, Interrupt, IrqType, MmioRange, Trigger

GIC = """
    gic: interrupt-controller@8000000 {
        compatible = "arm,gic-400";
        #interrupt-cells = <3>;
        #address-cells = <0>;
        interrupt-controller;
        reg = <0x0 0x8000000 0x0 0x1000>, <0x0 0x8010000 0x0 0x1000>;
    };
"""


def tree(body: str, root_props: str = "interrupt-parent = <&gic>;"):
    """A two-cell-address tree with a GIC at the root and ``body`` beside it."""
    return load_dts_source(f"""/dts-v1/;
/ {{
    #address-cells = <2>;
    #size-cells = <2>;
    {root_props}
    {GIC}
    {body}
}};
""")


def test_ranges_translate_through_every_level() -> None:
    t = tree("""
    soc {
        compatible = "simple-bus";
        #address-cells = <1>;
        #size-cells = <1>;
        ranges = <0x0 0x0 0xf0000000 0x10000000>;
        bus@100000 {
            compatible = "simple-bus";
            #address-cells = <1>;
            #size-cells = <1>;
            ranges = <0x0 0x100000 0x10000>;
            serial@2000 {
                compatible = "arm,pl011";
                reg = <0x2000 0x1000>, <0x3000 0x100>;
                reg-names = "regs", "extra";
            };
        };
    };
    """)
    node = t.node("/soc/bus@100000/serial@2000")
    assert node.is_mmio
    assert node.regions == (
        MmioRange(0xF0102000, 0x1000, "regs"),
        MmioRange(0xF0103000, 0x100, "extra"),
    )
    assert node.problems == ()


def test_empty_ranges_is_identity_and_multi_cell_sizes() -> None:
    t = tree("""
    bus {
        compatible = "simple-bus";
        #address-cells = <2>;
        #size-cells = <2>;
        ranges;
        rtc@9010000 {
            compatible = "arm,pl031";
            reg = <0x1 0x9010000 0x1 0x0>;
        };
    };
    """)
    assert t.node("/bus/rtc@9010000").regions == (MmioRange(0x1_0901_0000, 0x1_0000_0000),)


def test_bus_without_ranges_is_not_mmio() -> None:
    t = tree("""
    soc {
        compatible = "simple-bus";
        #address-cells = <1>;
        #size-cells = <1>;
        ranges;
        i2c@1000 {
            compatible = "vendor,i2c";
            reg = <0x1000 0x100>;
            #address-cells = <1>;
            #size-cells = <0>;
            rtc@51 { compatible = "nxp,pcf8563"; reg = <0x51>; };
        };
        mdio {
            #address-cells = <1>;
            #size-cells = <1>;
            phy@1 { reg = <0x1 0x10>; };
        };
    };
    """)
    assert t.node("/soc/i2c@1000").is_mmio
    rtc = t.node("/soc/i2c@1000/rtc@51")
    assert not rtc.is_mmio and rtc.regions == () and rtc.problems == ()
    # a bus without ranges ends the CPU space even with non-zero #size-cells
    assert not t.node("/soc/mdio/phy@1").is_mmio
    paths = [d.path for d in t.devices()]
    assert paths == ["/interrupt-controller@8000000", "/soc/i2c@1000"]
    assert "/soc/i2c@1000/rtc@51" in [d.path for d in t.devices(all=True)]


def test_reg_outside_ranges_is_a_problem_of_that_node() -> None:
    t = tree("""
    soc {
        compatible = "simple-bus";
        #address-cells = <1>;
        #size-cells = <1>;
        ranges = <0x0 0x0 0x10000000 0x1000>;
        gpio@0 { compatible = "arm,pl061"; reg = <0x0 0x100>, <0x5000 0x100>; };
        gpio@8000 { compatible = "arm,pl061"; reg = <0x8000 0x100>; };
    };
    """)
    partly = t.node("/soc/gpio@0")
    assert partly.is_mmio and partly.regions == (MmioRange(0x10000000, 0x100),)
    assert partly.problems == (
        "reg entry 1 (0x5000, size 0x100) is outside every window of the parent buses' "
        "ranges",)
    assert not t.node("/soc/gpio@8000").is_mmio


def test_gic_specifiers_decoded() -> None:
    t = tree("""
    dev@1000 {
        compatible = "vendor,dev";
        reg = <0x0 0x1000 0x0 0x1000>;
        interrupts = <0 33 4>, <1 9 0xf04>, <0 34 1>, <0 35 2>, <0 36 3>, <0 37 8>;
        interrupt-names = "a", "b", "c", "d", "e", "f";
    };
    """)
    irqs = t.node("/dev@1000").interrupts
    gic = "/interrupt-controller@8000000"
    assert irqs[0] == Interrupt(gic, (0, 33, 4), IrqType.SPI, 33, Trigger.LEVEL_HIGH, "a")
    assert irqs[1] == Interrupt(gic, (1, 9, 0xF04), IrqType.PPI, 9, Trigger.LEVEL_HIGH, "b")
    assert [i.trigger for i in irqs[2:]] == [
        Trigger.EDGE_RISING, Trigger.EDGE_FALLING, Trigger.EDGE_BOTH, Trigger.LEVEL_LOW]
    assert irqs[0].trigger.is_level and not irqs[2].trigger.is_level


def test_gic_v3_four_cells() -> None:
    t = load_dts_source("""/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    interrupt-parent = <&gic>;
    gic: interrupt-controller@0 {
        compatible = "arm,gic-v3"; #interrupt-cells = <4>; interrupt-controller;
        reg = <0x0 0x10000>;
    };
    pmu { compatible = "arm,armv8-pmuv3"; interrupts = <1 7 4 0>; };
    dev@100000 { reg = <0x100000 0x1000>; interrupts = <0 12 1 0>; };
};
""")
    assert t.node("/pmu").interrupts[0].type is IrqType.PPI
    irq = t.node("/dev@100000").interrupts[0]
    assert (irq.type, irq.number, irq.trigger) == (IrqType.SPI, 12, Trigger.EDGE_RISING)


def test_inherited_interrupt_parent_and_two_cell_controller() -> None:
    t = tree("""
    soc {
        compatible = "simple-bus";
        #address-cells = <1>; #size-cells = <1>; ranges = <0x0 0x0 0x0 0x20000000>;
        interrupt-parent = <&gpio>;
        gpio: gpio@1000 {
            compatible = "vendor,gpio"; reg = <0x1000 0x100>;
            interrupt-parent = <&gic>; interrupts = <0 40 4>;
            interrupt-controller; #interrupt-cells = <2>;
        };
        button@2000 { reg = <0x2000 0x10>; interrupts = <5 2>; };
        nested {
            #address-cells = <1>; #size-cells = <1>; ranges;
            key@3000 { reg = <0x3000 0x10>; interrupts = <6 8>; };
        };
    };
    """)
    gpio = t.node("/soc/gpio@1000").interrupts[0]
    assert (gpio.controller, gpio.type, gpio.number) == (
        "/interrupt-controller@8000000", IrqType.SPI, 40)
    assert t.node("/soc/button@2000").interrupts == (
        Interrupt("/soc/gpio@1000", (5, 2), IrqType.OTHER, 5, Trigger.EDGE_FALLING),)
    key = t.node("/soc/nested/key@3000").interrupts[0]
    assert (key.controller, key.number, key.trigger) == ("/soc/gpio@1000", 6, Trigger.LEVEL_LOW)


def test_interrupts_extended() -> None:
    t = tree("""
    gpio: gpio@1000 {
        reg = <0x0 0x1000 0x0 0x100>; interrupt-controller; #interrupt-cells = <2>;
    };
    dev@2000 {
        reg = <0x0 0x2000 0x0 0x100>;
        interrupts-extended = <&gic 0 50 4>, <&gpio 3 1>;
    };
    """)
    irqs = t.node("/dev@2000").interrupts
    assert [(i.controller, i.type, i.number, i.trigger) for i in irqs] == [
        ("/interrupt-controller@8000000", IrqType.SPI, 50, Trigger.LEVEL_HIGH),
        ("/gpio@1000", IrqType.OTHER, 3, Trigger.EDGE_RISING),
    ]


def test_interrupt_map_chain_with_mask() -> None:
    # two nexus levels: the device's (unit address, pin) goes through /bridge then /router
    t = tree("""
    router: router {
        #interrupt-cells = <1>; #address-cells = <0>;
        interrupt-map-mask = <0x3>;
        interrupt-map = <0 &gic 0 60 4>, <1 &gic 0 61 1>, <2 &gic 0 62 8>, <3 &gic 0 63 4>;
    };
    bridge {
        compatible = "simple-bus";
        #address-cells = <1>; #size-cells = <1>; ranges = <0x0 0x0 0x40000000 0x100000>;
        #interrupt-cells = <1>;
        interrupt-map-mask = <0xf000 0x7>;
        interrupt-map = <0x1000 1 &router 1>, <0x2000 1 &router 2>, <0x2000 2 &router 7>;
        dev@1000 { reg = <0x1000 0x100>; interrupt-parent = <&bridge>; interrupts = <1>; };
        dev@2000 { reg = <0x2000 0x100>; interrupt-parent = <&bridge>; interrupts = <9>, <2>; };
        dev@3000 { reg = <0x3000 0x100>; interrupt-parent = <&bridge>; interrupts = <1>; };
    };
    """.replace("bridge {", "bridge: bridge {"))
    one = t.node("/bridge/dev@1000").interrupts
    assert [(i.controller, i.number, i.trigger) for i in one] == [
        ("/interrupt-controller@8000000", 61, Trigger.EDGE_RISING)]
    # pin 9 & 7 = 1 -> router 2 -> SPI 62; pin 2 -> router 7 & 3 = 3 -> SPI 63
    two = t.node("/bridge/dev@2000").interrupts
    assert [(i.number, i.trigger) for i in two] == [
        (62, Trigger.LEVEL_LOW), (63, Trigger.LEVEL_HIGH)]
    three = t.node("/bridge/dev@3000")
    assert three.interrupts == ()
    assert three.problems == (
        "interrupt 0: /bridge: interrupt-map has no entry for <0x3000 0x1>",)


def test_clocks_with_fixed_rates_and_names() -> None:
    t = tree("""
    osc: osc24m { compatible = "fixed-clock"; #clock-cells = <0>; clock-frequency = <24000000>; };
    half: half { compatible = "fixed-factor-clock"; #clock-cells = <0>;
                 clocks = <&osc>; clock-mult = <1>; clock-div = <2>; };
    cru: clock-controller@5000 { reg = <0x0 0x5000 0x0 0x1000>; #clock-cells = <1>; };
    uart@6000 {
        reg = <0x0 0x6000 0x0 0x100>;
        clocks = <&cru 12>, <&osc>, <0>, <&half>;
        clock-names = "apb_pclk", "uartclk", "none", "slow";
    };
    uart@7000 {
        reg = <0x0 0x7000 0x0 0x100>;
        clocks = <&osc>, <&nocells 3>, <&osc>;
    };
    nocells: mailbox@8000 { reg = <0x0 0x8000 0x0 0x100>; };
    """.replace("cru: clock-controller", "cru: clock-controller"))
    assert t.node("/uart@6000").clocks == (
        Clock("/clock-controller@5000", (12,), "apb_pclk", None),
        Clock("/osc24m", (), "uartclk", 24_000_000),
        Clock("/half", (), "slow", 12_000_000),
    )
    # a provider without #clock-cells stops the parse there; earlier clocks are kept
    partial = t.node("/uart@7000")
    assert partial.clocks == (Clock("/osc24m", (), None, 24_000_000),)
    assert partial.problems == ("clock provider /mailbox@8000 has no #clock-cells",)
    assert not t.node("/osc24m").is_mmio
    assert "/osc24m" not in [d.path for d in t.devices()]


def test_broken_phandles_are_problems_of_their_node_only() -> None:
    t = tree("""
    good@1000 { reg = <0x0 0x1000 0x0 0x100>; interrupts = <0 1 4>; };
    bad@2000 {
        reg = <0x0 0x2000 0x0 0x100>;
        interrupt-parent = <0x4242>;
        interrupts = <0 2 4>;
        clocks = <0x777 1>;
    };
    worse@3000 { reg = <0x0 0x3000 0x0 0x101 0x5>; interrupts-extended = <0x99 1>; };
    """)
    bad = t.node("/bad@2000")
    assert bad.regions == (MmioRange(0x2000, 0x100),)
    assert bad.problems == (
        "interrupt-parent <0x4242> of /bad@2000 names no node",
        "clocks names phandle <0x777>, no node",
    )
    worse = t.node("/worse@3000")
    assert worse.problems == (
        "reg has 5 cells, not a multiple of #address-cells 2 + #size-cells 2",
        "interrupts-extended names phandle <0x99>, no node",
    )
    good = t.node("/good@1000")
    assert good.problems == () and good.interrupts[0].number == 1
    assert len(t.devices(all=True)) == 4


def test_node_lookup_by_alias_and_missing() -> None:
    t = tree("""
    aliases { serial0 = "/uart@6000"; };
    uart@6000 { reg = <0x0 0x6000 0x0 0x100>; status = "disabled"; };
    """)
    node = t.node("serial0")
    assert node.path == "/uart@6000" and node.status == "disabled" and not node.enabled
    with pytest.raises(NodeError, match="no such node"):
        t.node("/nope")


def test_memory_cpus_and_reserved_memory_are_not_devices() -> None:
    t = tree("""
    memory@40000000 { device_type = "memory"; reg = <0x0 0x40000000 0x0 0x10000000>; };
    cpus { #address-cells = <1>; #size-cells = <0>;
           cpu@0 { device_type = "cpu"; reg = <0>; }; };
    reserved-memory { #address-cells = <2>; #size-cells = <2>; ranges;
        buf@48000000 { reg = <0x0 0x48000000 0x0 0x100000>; no-map; }; };
    """)
    assert [d.path for d in t.devices()] == ["/interrupt-controller@8000000"]


def test_bad_inputs_raise_load_errors(tmp_path) -> None:
    with pytest.raises(DeviceTreeLoadError, match="not a device tree"):
        load_blob(b"\0" * 64)
    with pytest.raises(DeviceTreeLoadError, match="too short"):
        load_blob(b"\xd0\x0d\xfe\xed")
    broken = tmp_path / "broken.dts"
    broken.write_text("/dts-v1/; / { foo = <1 ; };")
    with pytest.raises(DeviceTreeLoadError, match=r"dtc failed: .*syntax error"):
        load_dts(broken)
    with pytest.raises(DeviceTreeLoadError, match=r"(?i)no such file"):
        load_dts(tmp_path / "missing.dts")


def test_raw_tree_children_and_duplicate_phandles() -> None:
    import libfdt

    from platpass.firmware.devicetree import compile_dts

    blob = compile_dts(text="""/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    a@1000 { reg = <0x1000 0x100>; phandle = <7>; x { }; y { }; };
    b@2000 { reg = <0x2000 0x100>; phandle = <8>; };
};
""")
    # dtc refuses duplicate phandles, so make one with libfdt, as a broken firmware would
    fdt = libfdt.Fdt(bytearray(blob))
    fdt.setprop_u32(fdt.path_offset("/b@2000"), "phandle", 7)
    t = load_blob(fdt.as_bytearray())
    raw = t.raw
    assert [n.path for n in raw.children(raw.root)] == ["/a@1000", "/b@2000"]
    assert [n.name for n in raw.children(t.raw_node("/a@1000"))] == ["x", "y"]
    assert raw.by_phandle[7].path == "/a@1000"
    assert t.problems == ("phandle 0x7 used by both /a@1000 and /b@2000",)


def test_malformed_ranges_and_interrupts_are_node_problems() -> None:
    t = tree("""
    bus {
        compatible = "simple-bus";
        #address-cells = <1>; #size-cells = <1>;
        ranges = <0x0 0x0 0x0>;
        dev@0 { reg = <0x0 0x100>; };
    };
    odd@4000 { reg = <0x0 0x4000 0x0 0x1000>; interrupts = <0 5>; };
    nocells@5000 { reg = <0x0 0x5000 0x0 0x1000>; interrupt-parent = <&plain>;
                   interrupts = <1>; };
    plain: plain { phandle = <0x99>; };
    """)
    dev = t.node("/bus/dev@0")
    assert not dev.is_mmio
    assert dev.problems == (
        "/bus: ranges has 3 cells, not a multiple of 1+2+1",)
    assert t.node("/odd@4000").problems == (
        "interrupts has 2 cells, not a multiple of #interrupt-cells 3 of "
        "/interrupt-controller@8000000",)
    # an interrupt-parent without #interrupt-cells: Linux keeps walking up from it
    assert t.node("/nocells@5000").problems == (
        "interrupts has 1 cells, not a multiple of #interrupt-cells 3 of "
        "/interrupt-controller@8000000",)


def test_load_live_reads_the_given_blob(tmp_path) -> None:
    from platpass.firmware.devicetree import compile_dts, load_live

    fdt = tmp_path / "fdt"
    fdt.write_bytes(compile_dts(text="/dts-v1/; / { #address-cells = <1>; #size-cells = <1>; "
                                     "uart@1000 { reg = <0x1000 0x100>; }; };"))
    assert [d.path for d in load_live(fdt).devices()] == ["/uart@1000"]
    with pytest.raises(DeviceTreeLoadError, match="No such file"):
        load_live(tmp_path / "missing")
