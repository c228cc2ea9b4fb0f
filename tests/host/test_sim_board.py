"""The simulated board: its DTS compiles cleanly, and each simple device opens its model."""

from __future__ import annotations

import subprocess

import pytest

from platpass.errors import HostError
from platpass.firmware.model import DeviceNode, MmioRange
from platpass.host.simulated.board import (
    board_dtb,
    board_dts_path,
    load_board,
    open_sim_backend,
)
from platpass.host.simulated.clock import ManualClock
from platpass.reactor import EpollReactor

MODELLED = {
    "/soc@9000000/serial@0": "pl011",
    "/soc@9000000/serial@10000": "pl011",
    "/soc@9000000/rtc@20000": "pl031",
    "/soc@9000000/gpio@30000": "pl061",
    "/soc@9000000/watchdog@40000": "sp805",
    "/soc@9000000/serial@50000": "ns16550",
}
BUS_MASTERS = (
    "/soc@9000000/dma-controller@100000",
    "/soc@9000000/ethernet@200000",
    "/soc@9000000/usb@300000",
    "/soc@9000000/spi@400000",
)


@pytest.fixture(scope="module")
def board():
    return load_board()


@pytest.fixture
def reactor():
    loop = EpollReactor()
    yield loop
    loop.close()


def test_dts_compiles_without_warnings(dtc):
    proc = subprocess.run([dtc, "-I", "dts", "-O", "dtb", "-o", "/dev/null",
                           str(board_dts_path())], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stderr == ""
    assert board_dtb() is board_dtb()            # compiled once per process


def test_simple_devices_are_platform_devices_on_their_own_page_and_spi(board):
    spis = []
    for path in MODELLED:
        node = board.node(path)
        assert not node.is_primecell
        (region,) = node.regions
        assert region.address % 0x1000 == 0 and region.size == 0x1000
        (irq,) = node.interrupts
        assert irq.trigger.is_level
        spis.append(irq.number)
    assert len(set(spis)) == len(spis)
    assert board.node("/soc@9000000/serial@0").regions[0].address == 0x0900_0000


def test_each_simple_device_opens_its_model(board, reactor):
    for path, kind in MODELLED.items():
        backend = open_sim_backend(board.node(path), reactor, ManualClock())
        try:
            assert backend.model.kind == kind
            assert backend.regions[0].size == 0x1000
            assert backend.irq_count == 1
        finally:
            backend.close()


def test_clock_rates_and_layout_come_from_the_node(board, reactor):
    uart = open_sim_backend(board.node("/soc@9000000/serial@0"), reactor, ManualClock())
    wdt = open_sim_backend(board.node("/soc@9000000/watchdog@40000"), reactor, ManualClock())
    ns = open_sim_backend(board.node("/soc@9000000/serial@50000"), reactor, ManualClock())
    try:
        assert uart.model.uartclk == 24_000_000
        assert wdt.model.rate == 1_000_000
        assert (ns.model.stride, ns.model.reg_width, ns.model.clock_rate) == (4, 4, 24_000_000)
    finally:
        for backend in (uart, wdt, ns):
            backend.close()


def test_bus_masters_have_no_model(board, reactor):
    for path in BUS_MASTERS:
        with pytest.raises(HostError, match="no simulated model"):
            open_sim_backend(board.node(path), reactor)
    assert "#dma-cells" in board.node(BUS_MASTERS[0]).properties
    assert "dmas" in board.node("/soc@9000000/serial@10000").properties


def test_reactor_clock_drives_the_uart(board, reactor):
    backend = open_sim_backend(board.node("/soc@9000000/serial@0"), reactor)
    try:
        backend.write(0, 0x024, 4, 13)           # IBRD: 115200 baud
        backend.write(0, 0x02C, 4, 0x70)         # LCR_H: 8N1, FIFOs
        backend.write(0, 0x030, 4, 0x301)        # CR: UARTEN | TXE | RXE
        for byte in b"hi":
            backend.write(0, 0x000, 4, byte)
        assert reactor.run_until(lambda: backend.model.tx_output == b"hi", timeout=2.0)
    finally:
        backend.close()


def _node(compatible: str, regions: int = 1, **props: bytes) -> DeviceNode:
    return DeviceNode(
        "/soc/dev", (compatible,), "okay", True,
        regions=tuple(MmioRange(0x1000 * (i + 1), 0x1000) for i in range(regions)),
        properties=dict(props),
    )


@pytest.mark.parametrize("node", [
    _node("ns16550a", **{"reg-io-width": (3).to_bytes(4, "big")}),
    _node("ns16550a", **{"reg-shift": (0).to_bytes(4, "big"),
                         "reg-io-width": (4).to_bytes(4, "big")}),
    _node("ns16550a", **{"reg-shift": b"\x02"}),
    _node("arm,pl011", regions=2),
    _node("arm,pl011", regions=0),
    _node("vendor,unknown"),
], ids=["io-width-3", "width-over-stride", "short-cell", "two-regions", "no-region",
        "unknown"])
def test_malformed_nodes_get_a_clear_error(node, reactor):
    with pytest.raises(HostError, match="/soc/dev"):
        open_sim_backend(node, reactor, ManualClock())
