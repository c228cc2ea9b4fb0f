"""The host-node -> guest-node transform, compiled by dtc and read back with libfdt."""

from __future__ import annotations

import dataclasses

import libfdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.drivers.common import PlatformDriver
from platpass.errors import GuestError
from platpass.firmware.model import Clock, DeviceNode, MmioRange
from platpass.guest.dtc import compile_dts
from platpass.guest.dts import Raw, Ref, Strings, cells_of, header, render_nodes
from platpass.guest.placement import AddressRange, Allocator, new_record
from platpass.guest.transform import ClockRates, build_guest_device


class Pl031Stand(PlatformDriver):
    name = "test-pl031-h"
    compatibles = ("arm,pl031",)
    family = "rtc"
    evidence = "test declaration"


def compile_alone(devices) -> libfdt.FdtRo:
    """Devices as a standalone tree with a GIC stand-in, compiled with every check on."""
    nodes = []
    for d in devices:
        nodes.append(d.node)
        nodes.extend(c.node() for c in d.clocks)
    source = (header([]) + "/ {\n\t#address-cells = <2>;\n\t#size-cells = <2>;\n"
              "\tinterrupt-parent = <&gic>;\n\tgic: gic {\n\t\tinterrupt-controller;\n"
              "\t\t#interrupt-cells = <3>;\n\t\t#address-cells = <0>;\n\t};\n\n"
              + render_nodes(nodes) + "\n};\n")
    return libfdt.FdtRo(compile_dts(source))


def cells(fdt: libfdt.FdtRo, path: str, prop: str) -> tuple[int, ...]:
    return cells_of(bytes(fdt.getprop(fdt.path_offset(path), prop)))


def test_uart_moves_renumbers_and_drops(uart: DeviceNode, drivers, host_phandles) -> None:
    alloc = Allocator(new_record(window=AddressRange(0x2000_0000, 0x10_0000)))
    placement = alloc.place(uart)
    dev = build_guest_device(uart, drivers["uart"](uart), placement,
                             rates=ClockRates(overrides={"apb_pclk": 100_000_000}),
                             host_phandles=host_phandles)
    assert dev.node.name == "serial@20000400"
    fdt = compile_alone([dev])
    path = "/serial@20000400"
    assert cells(fdt, path, "reg") == (0, 0x2000_0400, 0, 0x100)
    # host level-low SPI 100 -> guest SPI 112, level (high: the GIC's polarity)
    assert cells(fdt, path, "interrupts") == (0, 112, 4)
    for gone in ("dmas", "dma-names", "pinctrl-names", "pinctrl-0", "power-domains",
                 "resets", "reset-names", "iommus", "vcc-supply", "rts-gpios",
                 "rockchip,grf", "assigned-clocks", "assigned-clock-rates",
                 "snps,uart-16550-compatible"):
        assert fdt.getprop(fdt.path_offset(path), gone, quiet=(libfdt.NOTFOUND,)) \
            == -libfdt.NOTFOUND, gone
        assert gone in dev.dropped
    assert dev.dropped["rockchip,grf"] == "phandle to a host-only node"
    assert dev.dropped["snps,uart-16550-compatible"] == "dropped by driver test-dw-uart"
    # driver rewrite wins; binding parameters survive
    assert cells(fdt, path, "reg-io-width") == (4,)
    assert cells(fdt, path, "reg-shift") == (2,)
    assert bytes(fdt.getprop(fdt.path_offset(path), "status")) == b"okay\0"
    assert bytes(fdt.getprop(fdt.path_offset(path), "compatible")) == \
        b"rockchip,rk3399-uart\0snps,dw-apb-uart\0"
    assert bytes(fdt.getprop(fdt.path_offset(path), "clock-names")) == b"baudclk\0apb_pclk\0"
    # each clock is a fixed-clock at the host's rate
    rates = []
    for phandle in cells(fdt, path, "clocks"):
        clk = fdt.node_offset_by_phandle(phandle)
        assert bytes(fdt.getprop(clk, "compatible")) == b"fixed-clock\0"
        rates.append(cells_of(bytes(fdt.getprop(clk, "clock-frequency")))[0])
    assert rates == [48_000_000, 100_000_000]  # assigned-clock-rates, command line
    assert [c.source for c in dev.clocks] == ["assigned-clock-rates", "command line (apb_pclk)"]


def test_unknown_clock_rate_is_refused_with_the_way_out(uart: DeviceNode, drivers) -> None:
    props = {k: v for k, v in uart.properties.items() if not k.startswith("assigned-")}
    bare = dataclasses.replace(uart, properties=props)
    placement = Allocator(new_record()).place(bare)
    with pytest.raises(GuestError, match=r"no rate is known for clock 0 \('baudclk'\).*"
                                         r"--clock-rate"):
        build_guest_device(bare, drivers["uart"](bare), placement)
    # the APB bus clock alone never blocks: its rate is not used by drivers
    dev = build_guest_device(bare, drivers["uart"](bare), placement,
                             rates=ClockRates(overrides={"baudclk": 1_843_200}))
    assert [(c.rate, c.source) for c in dev.clocks] == [
        (1_843_200, "command line (baudclk)"),
        (24_000_000, "default (APB bus clock; rate unused)")]


def test_clock_rate_sources_in_order(uart: DeviceNode, drivers) -> None:
    placement = Allocator(new_record()).place(uart)
    rates = ClockRates(
        overrides={"*": 1_000},
        live={"sclk_uart2": 7_372_800, "pclk_uart2": 50_000_000},
        provider_names={"/clock-controller@ff760000": tuple(
            "sclk_uart2" if i == 77 else "pclk_uart2" if i == 350 else f"c{i}"
            for i in range(400))},
    )
    dev = build_guest_device(uart, drivers["uart"](uart), placement, rates=rates)
    # baudclk: assigned-clock-rates beats live; apb_pclk: live beats "*"
    assert [c.rate for c in dev.clocks] == [48_000_000, 50_000_000]
    explicit = ClockRates(overrides={"baudclk": 24_000_000, "*": 1_000})
    dev = build_guest_device(uart, drivers["uart"](uart), placement, rates=explicit)
    assert [c.rate for c in dev.clocks] == [24_000_000, 1_000]


def test_primecell_keeps_compatible_and_gets_apb_pclk(pl031: DeviceNode, drivers) -> None:
    bare = DeviceNode(path=pl031.path, compatible=pl031.compatible, status="okay",
                      is_mmio=True, regions=pl031.regions, interrupts=pl031.interrupts,
                      properties={"compatible": pl031.properties["compatible"]})
    placement = Allocator(new_record()).place(bare)
    dev = build_guest_device(bare, drivers["pl031"](bare), placement)
    assert dev.node.properties["compatible"] == Raw(b"arm,pl031\0arm,primecell\0")
    assert dev.node.properties["clock-names"] == Strings(("apb_pclk",))
    assert dev.node.properties["clocks"].values == (Ref(dev.clocks[0].label),)
    compile_alone([dev])


def test_fixed_host_clock_rate_and_shared_clock_deduplicated(pl031: DeviceNode,
                                                              drivers) -> None:
    two = DeviceNode(path=pl031.path, compatible=pl031.compatible, status="okay",
                     is_mmio=True, regions=pl031.regions, interrupts=pl031.interrupts,
                     clocks=(Clock("/clk24mhz", (), "x", 24_000_000),
                             Clock("/clk24mhz", (), "apb_pclk", 24_000_000)),
                     properties={"compatible": pl031.properties["compatible"]})
    dev = build_guest_device(two, drivers["pl031"](two), Allocator(new_record()).place(two))
    assert len(dev.clocks) == 1 and dev.clocks[0].rate == 24_000_000
    assert dev.clocks[0].source == "fixed-clock /clk24mhz"
    fdt = compile_alone([dev])
    handles = cells(fdt, "/" + dev.node.name, "clocks")
    assert handles[0] == handles[1]


def test_odd_host_values_render_exactly(pl031: DeviceNode, drivers) -> None:
    odd = {
        "compatible": pl031.properties["compatible"],
        "vendor,bytes": b"\x01\x02\x03",
        "vendor,quote": b'a"b\\c\0',
        "vendor,flag": b"",
        "vendor,cells": (0xDEADBEEF).to_bytes(4, "big"),
        "vendor,strings": b"one\0two\0",
    }
    node = DeviceNode(path=pl031.path, compatible=pl031.compatible, status="okay",
                      is_mmio=True, regions=pl031.regions, properties=odd)
    dev = build_guest_device(node, drivers["pl031"](node), Allocator(new_record()).place(node))
    assert isinstance(dev.node.properties["vendor,bytes"], Raw)
    fdt = compile_alone([dev])
    offset = fdt.path_offset("/" + dev.node.name)
    for name, value in odd.items():
        if name != "compatible":
            assert bytes(fdt.getprop(offset, name)) == value, name



@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["vendor,a", "vendor,b-c", "acme,x", "acme,y-z"]),
                       st.binary(max_size=24), max_size=4))
def test_any_host_value_compiles_back_to_the_same_bytes(values: dict[str, bytes]) -> None:
    """Whatever bytes a host property holds, the DTS we write compiles to exactly them."""
    props = {"compatible": b"arm,pl031\0", **values}
    node = DeviceNode(path="/rtc@1000", compatible=("arm,pl031",), status="okay",
                      is_mmio=True, regions=(MmioRange(0x1000, 0x1000),), properties=props)
    dev = build_guest_device(node, Pl031Stand(node), Allocator(new_record()).place(node))
    fdt = compile_alone([dev])
    offset = fdt.path_offset("/" + dev.node.name)
    for name, value in values.items():
        assert bytes(fdt.getprop(offset, name)) == value, name
