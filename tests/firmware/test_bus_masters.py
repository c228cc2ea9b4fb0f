"""No bus master on any real board is ever called assignable.

Two registries: the built-in one (what users get), and a deliberately wrong one that claims
*every* compatible string of every board. Firmware evidence alone must still refuse every
node that belongs to a bus-master family, whatever a driver says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.firmware.devicetree import DeviceTree, load_dtb
from platpass.firmware.verdict import Verdict, assess_tree

#: Written independently of the implementation's list, from the issue's words.
MASTERS = re.compile(
    r"usb|[eox]hci|dwc[23]|musb|ethernet|gmac|emac|dwmac|stmmac|\bfec\b|macb|enetc|"
    r"mmc|sdhci|sdhi|mshc|sata|ahci|ufs|pcie|gpu|mali|adreno|display|hdmi|\bvop|dpu|mdss|"
    r"vpu|video|codec|jpeg|crypto|caam|dma|pl330|qcom,geni-|smmu|iommu|nand|qspi")


@pytest.fixture(scope="module")
def trees(shared_dtbs: list[Path]) -> list[DeviceTree]:
    return [load_dtb(path) for path in shared_dtbs]


def greedy_registry(trees: list[DeviceTree]) -> DriverRegistry:
    compatibles = sorted({c for t in trees for n in t.devices() for c in n.compatible})

    class ClaimsEverything(PlatformDriver):
        name = "claims-everything"
        family = "test"
        evidence = "none: this driver is wrong on purpose"

    ClaimsEverything.compatibles = tuple(compatibles)
    return DriverRegistry([ClaimsEverything])


def masters_called_assignable(trees: list[DeviceTree],
                              registry: DriverRegistry) -> list[tuple[str, str]]:
    bad = []
    for tree in trees:
        for assessment in assess_tree(tree, registry):
            node = assessment.node
            if assessment.verdict.assignable and any(
                    MASTERS.search(c.lower()) for c in node.compatible):
                bad.append((tree.source, node.path))
    return bad


def test_no_master_assignable_even_if_a_driver_claims_everything(
        trees: list[DeviceTree]) -> None:
    registry = greedy_registry(trees)
    assert masters_called_assignable(trees, registry) == []
    # the greedy registry does make plain devices assignable: the test is not vacuous
    verdicts = {a.verdict for t in trees for a in assess_tree(t, registry)}
    assert Verdict.ASSIGNABLE in verdicts


def test_no_master_assignable_with_the_builtin_drivers(trees: list[DeviceTree]) -> None:
    registry = default_registry(plugins=False)
    assert masters_called_assignable(trees, registry) == []
    for tree in trees:
        for assessment in assess_tree(tree, registry):
            assert assessment.evidence
            if assessment.driver is None:
                assert not assessment.verdict.assignable


def test_geni_serial_engines_refused_as_bus_masters(trees: list[DeviceTree]) -> None:
    registry = greedy_registry(trees)
    seen = 0
    for tree in trees:
        for assessment in assess_tree(tree, registry):
            if any(c.startswith("qcom,geni-") for c in assessment.node.compatible):
                seen += 1
                assert assessment.verdict is Verdict.REFUSED_BUS_MASTER
                rules = {e.rule for e in assessment.evidence}
                assert "bus-master-family" in rules
    assert seen > 100
    sc7180 = next(t for t in trees if t.source.endswith("sc7180-trogdor-lazor-r1-kb.dtb"))
    uart = next(a for a in assess_tree(sc7180, registry)
                if a.node.path == "/soc@0/geniqup@ac0000/serial@a88000")
    assert [str(e) for e in uart.evidence] == [
        "bus-master-ancestor: /soc@0/geniqup@ac0000:iommus = <0x25 0x4c3 0x0>",
        "bus-master-family: compatible = 'qcom,geni-debug-uart' is in a bus-master family: "
        "Qualcomm GENI serial engine (own DMA)",
    ]


def test_layerscape_duart_sharing_one_spi_is_refused(trees: list[DeviceTree]) -> None:
    """ls1028a: both 16550s of the DUART are wired to SPI 32 (hand-checked
    in the decompiled DTS): refused as shared, whatever driver claims them."""
    tree = next(t for t in trees if t.source.endswith("fsl-ls1028a-kontron-sl28.dtb"))
    result = {a.node.path: a for a in assess_tree(tree, greedy_registry(trees))}
    for path, other in (("/soc/serial@21c0500", "/soc/serial@21c0600"),
                        ("/soc/serial@21c0600", "/soc/serial@21c0500")):
        got = result[path]
        assert got.verdict is Verdict.REFUSED_SHARED
        assert [str(e) for e in got.evidence] == [
            f"shared-interrupt: interrupts = SPI 32 of /interrupt-controller@6000000 also "
            f"used by {other}"]
