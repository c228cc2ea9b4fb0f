"""Every verdict rule on a small DTS, with the exact evidence it must give.

Drivers here are test-only classes in a local registry: the registry is the public
extension point third parties use, so this is how a plugin's drivers meet the rules too.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.drivers.common import PlatformDriver, Trap
from platpass.drivers.registry import DriverRegistry
from platpass.firmware.devicetree import load_dts_source
from platpass.firmware.model import MmioRange
from platpass.firmware.verdict import Assessment, Evidence, Verdict, assess_tree, shared_pages


class GpioDriver(PlatformDriver):
    name = "test-gpio"
    compatibles = ("test,gpio",)
    family = "gpio"
    evidence = "test GPIO block: registers only"


class UartDriver(PlatformDriver):
    name = "test-uart"
    compatibles = ("test,uart",)
    family = "uart"
    evidence = "test UART: slave-DMA handshake only"
    dma_traps = (Trap(0, 0x48, 4, "DMACR", "DMA request enables"),)


class ClaimsTooMuch(PlatformDriver):
    """A (buggy) driver claiming a compatible that the firmware shows is a bus master."""

    name = "test-greedy"
    compatibles = ("test,dwc3-usb", "test,wrapped-uart")
    family = "uart"
    evidence = "claims anything"


class KnownMaster(PlatformDriver):
    name = "test-master"
    compatibles = ("test,blitter",)
    family = "blitter"
    evidence = "the blitter reads and writes memory on its own"
    cannot_master_bus = False


class TrappingDriver(PlatformDriver):
    name = "test-trapping"
    compatibles = ("test,trapping",)
    family = "rtc"
    evidence = "test RTC"
    traps = (Trap(0, 0x10, 4, "CTRL", "shared with the host's alarm"),)


REGISTRY = DriverRegistry([GpioDriver, UartDriver, ClaimsTooMuch, KnownMaster, TrappingDriver])


def assess(body: str) -> dict[str, Assessment]:
    tree = load_dts_source(f"""/dts-v1/;
/ {{
    #address-cells = <1>;
    #size-cells = <1>;
    interrupt-parent = <&gic>;
    gic: interrupt-controller@1000000 {{
        compatible = "arm,gic-400"; #interrupt-cells = <3>; interrupt-controller;
        reg = <0x1000000 0x1000>, <0x1002000 0x2000>;
    }};
    dma: dma-controller@2000000 {{
        compatible = "test,pl330"; reg = <0x2000000 0x1000>; #dma-cells = <1>;
        interrupts = <0 99 4>; phandle = <0x20>;
    }};
    smmu: iommu@3000000 {{ reg = <0x3000000 0x10000>; #iommu-cells = <1>; phandle = <0x30>; }};
    {body}
}};
""")
    result = {a.node.path: a for a in assess_tree(tree, REGISTRY)}
    for assessment in result.values():
        assert assessment.evidence, assessment.node.path
    return result


def test_assignable_with_the_driver_as_evidence() -> None:
    result = assess("""gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x1000>;
                                     interrupts = <0 5 4>; };""")
    got = result["/gpio@10000"]
    assert got.verdict is Verdict.ASSIGNABLE
    assert got.driver is GpioDriver
    assert got.evidence == (Evidence(
        "driver", "compatible",
        "'test,gpio' claimed by test-gpio (gpio): test GPIO block: registers only"),)
    assert str(got.evidence[0]).startswith("driver: compatible = 'test,gpio' claimed by")


def test_slave_dma_gives_traps_and_names_dmas() -> None:
    result = assess("""uart@10000 { compatible = "test,uart"; reg = <0x10000 0x1000>;
                                     interrupts = <0 5 4>; dmas = <&dma 3>, <&dma 4>;
                                     dma-names = "tx", "rx"; };""")
    got = result["/uart@10000"]
    assert got.verdict is Verdict.ASSIGNABLE_WITH_TRAPS
    assert got.evidence[1] == Evidence(
        "slave-dma", "dmas", "<0x20 0x3 0x20 0x4>: dropped from the guest node; trapped: DMACR")
    # the DMA engine itself is a bus master (#dma-cells)
    engine = result["/dma-controller@2000000"]
    assert engine.verdict is Verdict.REFUSED_BUS_MASTER
    assert Evidence("bus-master-property", "#dma-cells", "<0x1>") in engine.evidence


def test_sub_page_region_is_trapped() -> None:
    result = assess("""gpio@10100 { compatible = "test,gpio"; reg = <0x10100 0x100>;
                                     interrupts = <0 5 4>; };""")
    got = result["/gpio@10100"]
    assert got.verdict is Verdict.ASSIGNABLE_WITH_TRAPS
    assert got.evidence[1:] == (Evidence(
        "sub-page-region", "reg[0]",
        "0x10100+0x100 is not 4096-byte aligned: trapped, not mapped"),)


def test_page_shared_with_another_device_is_trapped_even_a_disabled_one() -> None:
    result = assess("""
        gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x800>; interrupts = <0 5 4>; };
        gpio@10800 { compatible = "test,gpio"; reg = <0x10800 0x800>; interrupts = <0 6 4>; };
        gpio@20000 { compatible = "test,gpio"; reg = <0x20000 0x800>; interrupts = <0 7 4>; };
        gpio@20800 { compatible = "test,gpio"; reg = <0x20800 0x800>; interrupts = <0 8 4>;
                     status = "disabled"; };
        gpio@30000 { compatible = "test,gpio"; reg = <0x30000 0x1000>; interrupts = <0 9 4>; };
    """)
    shared = result["/gpio@10000"]
    assert shared.verdict is Verdict.ASSIGNABLE_WITH_TRAPS
    assert shared.evidence[2:] == (Evidence(
        "shared-page", "reg[0]", "shares a 4096-byte page with /gpio@10800"),)
    # a disabled node's registers are still there: its page is never mapped
    beside_disabled = result["/gpio@20000"]
    assert beside_disabled.verdict is Verdict.ASSIGNABLE_WITH_TRAPS
    assert not beside_disabled.may_map
    assert Evidence("shared-page", "reg[0]", "shares a 4096-byte page with /gpio@20800") \
        in beside_disabled.evidence
    assert Evidence("shared-page", "reg[0]", "shares a 4096-byte page with /gpio@20000") \
        in result["/gpio@20800"].evidence
    assert result["/gpio@30000"].verdict is Verdict.ASSIGNABLE


def test_a_bus_is_not_a_page_sharer_of_the_devices_on_it() -> None:
    result = assess("""
        bus@100000 { compatible = "simple-bus"; reg = <0x100000 0x400000>;
                     #address-cells = <1>; #size-cells = <1>; ranges;
            gpio@110000 { compatible = "test,gpio"; reg = <0x110000 0x1000>;
                          interrupts = <0 5 4>; };
            gpio@120000 { compatible = "test,gpio"; reg = <0x120000 0x1000>;
                          interrupts = <0 6 4>; };
        };
    """)
    for path in ("/bus@100000/gpio@110000", "/bus@100000/gpio@120000"):
        assert result[path].verdict is Verdict.ASSIGNABLE, result[path].reasons
        assert result[path].may_map


def test_overlapping_registers_are_shared_not_trapped() -> None:
    result = assess("""
        clock-controller@12010 { compatible = "test,uart-clock"; reg = <0x12010 0x4>; };
        serial@12000 { compatible = "test,uart"; reg = <0x12000 0x18>; interrupts = <0 5 4>; };
        serial@12200 { compatible = "test,uart"; reg = <0x12200 0x30>; interrupts = <0 6 4>; };
        serial@12220 { compatible = "test,uart"; reg = <0x12220 0x10>; interrupts = <0 7 4>;
                       status = "disabled"; };
    """)
    uart = result["/serial@12000"]
    assert uart.verdict is Verdict.REFUSED_SHARED
    assert uart.evidence == (Evidence(
        "overlapping-region", "reg[0]",
        "overlaps the registers of /clock-controller@12010"),)
    assert not uart.may_assign
    # a disabled node overlapping still claims the same registers
    assert result["/serial@12200"].verdict is Verdict.REFUSED_SHARED
    assert result["/serial@12220"].verdict is Verdict.REFUSED_SHARED


def test_shared_interrupt_is_refused_and_disabled_nodes_do_not_share() -> None:
    result = assess("""
        gpio@10000 { compatible = "test,gpio"; reg = <0x10000 0x1000>; interrupts = <0 5 4>; };
        gpio@20000 { compatible = "test,gpio"; reg = <0x20000 0x1000>; interrupts = <0 5 4>; };
        gpio@30000 { compatible = "test,gpio"; reg = <0x30000 0x1000>; interrupts = <0 6 4>; };
        gpio@40000 { compatible = "test,gpio"; reg = <0x40000 0x1000>; interrupts = <0 6 4>;
                     status = "disabled"; };
        bus { compatible = "simple-bus"; #address-cells = <1>; #size-cells = <1>; ranges;
              status = "disabled";
              gpio@50000 { compatible = "test,gpio"; reg = <0x50000 0x1000>;
                           interrupts = <0 6 4>; }; };
    """)
    got = result["/gpio@10000"]
    assert got.verdict is Verdict.REFUSED_SHARED
    assert got.evidence == (Evidence(
        "shared-interrupt", "interrupts",
        "SPI 5 of /interrupt-controller@1000000 also used by /gpio@20000"),)
    assert result["/gpio@20000"].verdict is Verdict.REFUSED_SHARED
    # SPI 6: the other user is disabled (directly, or through its bus)
    assert result["/gpio@30000"].verdict is Verdict.ASSIGNABLE
    assert result["/gpio@40000"].verdict is Verdict.REFUSED_SHARED


def test_no_driver_is_unknown() -> None:
    result = assess("""thing@10000 { compatible = "acme,thing", "acme,generic";
                                      reg = <0x10000 0x1000>; };""")
    got = result["/thing@10000"]
    assert got.verdict is Verdict.REFUSED_UNKNOWN and got.driver is None
    assert got.evidence == (Evidence(
        "no-driver", "compatible", "'acme,thing', 'acme,generic': no device-specific driver"),)


@pytest.mark.parametrize(("prop", "shown"), [
    ("iommus = <&smmu 5>;", Evidence("bus-master-property", "iommus", "<0x30 0x5>")),
    ("msi-parent = <&smmu>;", Evidence("bus-master-property", "msi-parent", "<0x30>")),
    ("msi-map = <0 &smmu 0 16>;", Evidence("bus-master-property", "msi-map",
                                           "<0x0 0x30 0x0 0x10>")),
    ("#dma-cells = <1>;", Evidence("bus-master-property", "#dma-cells", "<0x1>")),
    ("dma-coherent;", Evidence("bus-master-property", "dma-coherent", "(present)")),
    ("memory-region = <&smmu>;", Evidence("bus-master-property", "memory-region", "<0x30>")),
    ('device_type = "network";', Evidence("bus-master-property", "device_type", "'network'")),
])
def test_bus_master_properties_win_over_a_driver(prop: str, shown: Evidence) -> None:
    result = assess(f"""gpio@10000 {{ compatible = "test,gpio"; reg = <0x10000 0x1000>;
                                      interrupts = <0 5 4>; {prop} }};""")
    got = result["/gpio@10000"]
    assert got.verdict is Verdict.REFUSED_BUS_MASTER
    assert got.driver is GpioDriver
    assert got.evidence == (shown,)


def test_family_and_greedy_driver_never_assignable() -> None:
    result = assess("""usb@10000 { compatible = "test,dwc3-usb"; reg = <0x10000 0x1000>;
                                    interrupts = <0 5 4>; };""")
    got = result["/usb@10000"]
    assert got.verdict is Verdict.REFUSED_BUS_MASTER
    assert got.driver is ClaimsTooMuch
    assert got.evidence == (Evidence(
        "bus-master-family", "compatible",
        "'test,dwc3-usb' is in a bus-master family: USB controller"),)


def test_iommus_on_a_wrapper_taints_its_children() -> None:
    result = assess("""
        qup@100000 {
            compatible = "test,serial-engine-wrapper";
            reg = <0x100000 0x1000>;
            #address-cells = <1>; #size-cells = <1>; ranges;
            iommus = <&smmu 0x4c3>;
            serial@110000 { compatible = "test,wrapped-uart"; reg = <0x110000 0x1000>;
                            interrupts = <0 5 4>; };
        };
    """)
    got = result["/qup@100000/serial@110000"]
    assert got.verdict is Verdict.REFUSED_BUS_MASTER
    assert got.evidence == (Evidence(
        "bus-master-ancestor", "/qup@100000:iommus", "<0x30 0x4c3>"),)


def test_driver_declaring_a_master_refuses() -> None:
    result = assess("""blit@10000 { compatible = "test,blitter"; reg = <0x10000 0x1000>;
                                     interrupts = <0 5 4>; };""")
    got = result["/blit@10000"]
    assert got.verdict is Verdict.REFUSED_BUS_MASTER
    assert got.evidence == (Evidence(
        "bus-master-driver", "compatible",
        "driver test-master declares the IP masters the bus: the blitter reads and writes "
        "memory on its own"),)


def test_driver_traps_and_firmware_problems() -> None:
    result = assess("""
        rtc@10000 { compatible = "test,trapping"; reg = <0x10000 0x1000>; interrupts = <0 5 4>; };
        gpio@20000 { compatible = "test,gpio"; reg = <0x20000 0x1000>;
                     interrupts-extended = <0x4242 1>; };
    """)
    rtc = result["/rtc@10000"]
    assert rtc.verdict is Verdict.ASSIGNABLE_WITH_TRAPS
    assert rtc.evidence[1:] == (Evidence(
        "driver-trap", "reg[0]+0x10", "CTRL: shared with the host's alarm"),)
    broken = result["/gpio@20000"]
    assert broken.verdict is Verdict.REFUSED_UNKNOWN
    assert broken.evidence == (Evidence(
        "firmware-problem", "node", "interrupts-extended names phandle <0x4242>, no node"),)


def test_all_nodes_get_a_verdict_and_non_mmio_ones_are_refused() -> None:
    tree = load_dts_source("""/dts-v1/;
/ {
    #address-cells = <1>; #size-cells = <1>;
    i2c@10000 { compatible = "test,i2c"; reg = <0x10000 0x1000>;
                #address-cells = <1>; #size-cells = <0>;
                gpio@20 { compatible = "test,gpio"; reg = <0x20>; }; };
};
""")
    result = {a.node.path: a for a in assess_tree(tree, REGISTRY, all=True)}
    assert set(result) == {"/i2c@10000", "/i2c@10000/gpio@20"}
    child = result["/i2c@10000/gpio@20"]
    assert child.verdict is Verdict.REFUSED_UNKNOWN
    assert child.evidence == (Evidence(
        "not-mmio", "reg", "reg does not reach the CPU's address space"),)
    assert [a.node.path for a in assess_tree(tree, REGISTRY)] == ["/i2c@10000"]


def test_assessment_refuses_empty_evidence() -> None:
    tree = load_dts_source("/dts-v1/; / { #address-cells = <1>; #size-cells = <1>; "
                           "a@0 { reg = <0 0x1000>; }; };")
    with pytest.raises(ValueError, match="needs evidence"):
        Assessment(tree.node("/a@0"), Verdict.ASSIGNABLE, (), None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 64), st.integers(0, 0x3000)),
                min_size=1, max_size=12))
def test_shared_pages_matches_brute_force(spec: list[tuple[int, int]]) -> None:
    """The sweep finds exactly the pairs a page-by-page comparison finds."""
    users = [(f"/d{i}", (MmioRange(slot * 0x800, size),))
             for i, (slot, size) in enumerate(spec)]

    def pages(r: MmioRange) -> set[int]:
        if not r.size:
            return {r.address // 4096}
        return set(range(r.address // 4096, (r.end - 1) // 4096 + 1))

    expected: dict[str, set[str]] = {}
    for path, (region,) in users:
        for other, (oregion,) in users:
            if other != path and pages(region) & pages(oregion):
                expected.setdefault(path, set()).add(other)
    found = shared_pages(users)
    got = {path: {o for e in evidence for o in e.value.split(" with ", 1)[1].split(", ")}
           for path, evidence in found.items()}
    assert got == expected
