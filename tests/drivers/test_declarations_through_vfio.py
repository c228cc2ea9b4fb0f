"""A declared DMA trap, end to end: device tree -> driver -> VfioDevice -> simulated 16550.

The node is a Tegra-style UART (``nvidia,tegra20-uart``, claimed by
:class:`~platpass.drivers.nvidia.TegraUart`) that also lists ``ns16550a``, so the simulated
board runs its register-level 16550 model behind it. The model records FCR's DMA-mode bit,
which is exactly what the driver's trap must keep the guest from setting when the node has
``dmas``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from platpass.drivers.nvidia import TegraUart
from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import load_dts_source
from platpass.host.simulated import ManualClock
from platpass.host.simulated.board import open_sim_backend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice

DTS = """
/dts-v1/;
/ {
    #address-cells = <1>;
    #size-cells = <1>;
    interrupt-parent = <&gic>;

    gic: interrupt-controller@8000000 {
        compatible = "arm,gic-v3";
        reg = <0x8000000 0x10000>;
        interrupt-controller;
        #interrupt-cells = <3>;
    };

    apbdma: dma-controller@9100000 {
        compatible = "nvidia,tegra210-apbdma";
        reg = <0x9100000 0x1000>;
        #dma-cells = <1>;
    };

    serial@9000000 {
        compatible = "nvidia,tegra20-uart", "ns16550a";
        reg = <0x9000000 0x1000>;
        interrupts = <0 5 4>;
        reg-shift = <2>;
        reg-io-width = <4>;
        clock-frequency = <1843200>;
        dmas = <&apbdma 8>, <&apbdma 8>;
        dma-names = "rx", "tx";
    };

    serial@9001000 {
        compatible = "nvidia,tegra20-uart", "ns16550a";
        reg = <0x9001000 0x1000>;
        interrupts = <0 6 4>;
        reg-shift = <2>;
        reg-io-width = <4>;
        clock-frequency = <1843200>;
    };
};
"""

FCR = 0x08
IER = 0x04
#: FIFO enable, clear RX, clear TX, DMA mode, RX trigger 14 bytes.
FCR_WITH_DMA = 0xC0 | 0x08 | 0x07


@pytest.fixture
def open_uart() -> Iterator:
    tree = load_dts_source(DTS)
    opened: list[tuple[VfioDevice, EpollReactor]] = []

    def open_one(path: str) -> VfioDevice:
        node = tree.node(path)
        driver_class = default_registry(plugins=False).match(node.compatible)
        assert driver_class is TegraUart
        reactor = EpollReactor()
        backend = open_sim_backend(node, reactor, ManualClock())
        device = VfioDevice(node, driver_class(node), backend, reactor)
        device.open()
        opened.append((device, reactor))
        return device

    yield open_one
    for device, reactor in opened:
        device.close()
        reactor.close()


def test_guest_cannot_turn_on_dma_mode_of_a_slave_dma_uart(open_uart) -> None:
    device = open_uart("/serial@9000000")
    model = device.backend.model
    info = device.region_info(0)
    # The page holding FCR is trapped: no sparse-mmap area covers it.
    assert not any(a.offset <= FCR < a.offset + a.size for a in info.sparse_areas or ())
    device.write(0, FCR, 4, FCR_WITH_DMA)
    assert model.fifo_enabled and model.rx_trigger == 14
    assert model.dma_mode is False
    # IIR reads (same offset) come back whole: FIFOs-enabled bits 7:6 set.
    assert device.read(0, FCR, 4) & 0xC0 == 0xC0


def test_without_dmas_the_same_write_reaches_the_uart(open_uart) -> None:
    device = open_uart("/serial@9001000")
    device.write(0, FCR, 4, FCR_WITH_DMA)
    assert device.backend.model.dma_mode is True


def test_reset_quiesces_the_uart(open_uart) -> None:
    device = open_uart("/serial@9000000")
    model = device.backend.model
    device.write(0, IER, 4, 0x0F)
    assert model.ier == 0x0F
    device.reset()
    assert model.ier == 0
    assert model.dma_mode is False and model.fifo_enabled
