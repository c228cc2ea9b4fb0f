"""Driver declarations against the real device trees (``tests/real_dtbs.py``).

Every claimed node's traps and reset writes must fall inside the node's own registers; the
declarations must keep recognising the enabled UARTs, GPIOs, I2C controllers, watchdogs...
of the shared boards (floors measured when the declarations were written, so a regression
shows); and no node carrying bus-master evidence may be claimed by a driver that says it
cannot master the bus.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.firmware.devicetree import DeviceTree, load_dtb
from platpass.firmware.model import DeviceNode

#: Enabled MMIO nodes matched per family (non-bus-masters), measured on the 48 real DTBs.
FAMILY_FLOORS = {
    "uart": 62,
    "gpio": 84,
    "i2c": 84,
    "watchdog": 38,
    "pwm": 25,
    "spi": 38,
    "rtc": 4,
    "adc": 2,
}

#: Properties that prove a node masters the bus (DESIGN.md section 3, rule 1).
BUS_MASTER_PROPERTIES = ("iommus", "msi-parent", "msi-map", "#dma-cells", "dma-coherent",
                         "memory-region")


@pytest.fixture(scope="module")
def registry() -> DriverRegistry:
    return default_registry(plugins=False)


@pytest.fixture(scope="module")
def trees(shared_dtbs: list[Path]) -> list[DeviceTree]:
    return [load_dtb(path) for path in shared_dtbs]


def _claimed(trees: list[DeviceTree], registry: DriverRegistry,
             *, enabled_only: bool) -> list[tuple[DeviceTree, DeviceNode, type]]:
    out = []
    for tree in trees:
        for node in tree.devices():
            if enabled_only and not tree.effectively_enabled(node.path):
                continue
            driver = registry.match(node.compatible)
            if driver is not None:
                out.append((tree, node, driver))
    return out


def test_traps_and_reset_writes_lie_inside_the_nodes_registers(
        trees: list[DeviceTree], registry: DriverRegistry) -> None:
    checked = 0
    for tree, node, driver in _claimed(trees, registry, enabled_only=False):
        sizes = [r.size for r in node.regions]
        for trap in driver.traps + driver.dma_traps:
            assert trap.region < len(sizes), (tree.source, node.path, trap)
            assert trap.offset + trap.size <= sizes[trap.region], (tree.source, node.path, trap)
            checked += 1
        for step in driver.reset_sequence:
            assert step.region < len(sizes), (tree.source, node.path, step)
            assert step.offset + step.size <= sizes[step.region], (tree.source, node.path, step)
            checked += 1
    assert checked > 300


def test_enabled_nodes_matched_per_family_stay_above_the_floor(
        trees: list[DeviceTree], registry: DriverRegistry) -> None:
    counts: Counter[str] = Counter()
    for _tree, _node, driver in _claimed(trees, registry, enabled_only=True):
        if driver.cannot_master_bus:
            counts[driver.family] += 1
    for family, floor in FAMILY_FLOORS.items():
        assert counts[family] >= floor, (family, counts[family], floor)


def test_every_enabled_geni_node_matches_a_bus_master_declaration(
        trees: list[DeviceTree], registry: DriverRegistry) -> None:
    geni = 0
    for tree in trees:
        if "qcom__" not in tree.source:
            continue
        for node in tree.devices():
            if not tree.effectively_enabled(node.path):
                continue
            if not any(c.startswith("qcom,geni-") for c in node.compatible):
                continue
            driver = registry.match(node.compatible)
            assert driver is not None, (tree.source, node.path, node.compatible)
            assert driver.cannot_master_bus is False, (tree.source, node.path)
            geni += 1
    # 19 QUP wrappers, 16 UARTs, 30 I2C and 12 SPI engines on the shared Qualcomm boards.
    assert geni >= 77


def test_no_claimed_node_carries_bus_master_evidence(
        trees: list[DeviceTree], registry: DriverRegistry) -> None:
    for tree, node, driver in _claimed(trees, registry, enabled_only=False):
        if not driver.cannot_master_bus:
            continue
        found = [p for p in BUS_MASTER_PROPERTIES if p in node.properties]
        assert not found, (tree.source, node.path, driver.name, found)
        wrappers = [a.path for a in tree.ancestors(node.path) if "iommus" in a.props]
        assert not wrappers, (tree.source, node.path, driver.name, wrappers)


def test_slave_dma_nodes_get_dma_traps_where_the_ip_has_request_enables(
        trees: list[DeviceTree], registry: DriverRegistry) -> None:
    """A claimed node with ``dmas`` has its request enables trapped.

    Exceptions are the IPs with no request-enable register at all (their requests are
    only acted on by a host DMA channel the host never programs for an assigned device);
    each says so in its docstring.
    """
    no_enable_register = {"snps-dw-apb-uart", "renesas-scif"}
    with_dmas = 0
    for tree, node, driver in _claimed(trees, registry, enabled_only=True):
        if "dmas" not in node.properties or not driver.cannot_master_bus:
            continue
        with_dmas += 1
        drv = driver(node)
        if driver.name in no_enable_register:
            assert drv.active_traps() == driver.traps
            continue
        assert driver.dma_traps, (tree.source, node.path, driver.name)
        assert set(driver.dma_traps) <= set(drv.active_traps())
    assert with_dmas >= 47


def test_firmware_verdicts_follow_the_declarations(
        trees: list[DeviceTree], registry: DriverRegistry) -> None:
    """Through the real verdict engine: a declared bus master is always refused as one, and
    the declared families make enabled devices assignable on the shared boards (watchdogs
    only when the user opts in: here for every device)."""
    from platpass.firmware.verdict import Verdict, assess_tree

    assignable: Counter[str] = Counter()
    refused_masters = 0
    for tree in trees:
        opt_in = {node.path: {"system-reset"} for node in tree.devices()}
        plain = {a.node.path: a for a in assess_tree(tree, registry)}
        for assessment in assess_tree(tree, registry, overrides=opt_in):
            if assessment.driver is not None and assessment.driver.family == "watchdog":
                assert not plain[assessment.node.path].may_assign, assessment
            driver = assessment.driver
            if driver is None:
                continue
            if not driver.cannot_master_bus:
                assert assessment.verdict is Verdict.REFUSED_BUS_MASTER, assessment
                assert any(e.rule == "bus-master-driver" for e in assessment.evidence)
                refused_masters += 1
            elif tree.effectively_enabled(assessment.node.path) and assessment.verdict in (
                    Verdict.ASSIGNABLE, Verdict.ASSIGNABLE_WITH_TRAPS):
                assignable[driver.family] += 1
    assert refused_masters >= 77
    for family in ("uart", "gpio", "i2c", "watchdog", "pwm", "spi", "rtc"):
        assert assignable[family] > 0, (family, assignable)
