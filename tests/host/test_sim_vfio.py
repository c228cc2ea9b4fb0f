"""End to end over the VFIO device: GPIO, watchdog and 16550 on the simulated board, each
driven through VfioDevice (so through its driver's traps) with real trigger and resample
eventfds, and observed from the model's host side. (The PL011/PL031 cycles live in
tests/vfio_device/test_sim_guest.py.)"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from platpass.drivers.registry import default_registry
from platpass.host.simulated import ManualClock, SimulatedBackend
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqSetFlags as F
from platpass.vfio_device.uapi import RegionFlags

SOC = "/soc@9000000"


@dataclass
class Guest:
    device: VfioDevice
    backend: SimulatedBackend
    clock: ManualClock
    reactor: EpollReactor
    trigger: int
    resample: int

    def r(self, offset: int, size: int = 4) -> int:
        return self.device.read(0, offset, size)

    def w(self, offset: int, value: int, size: int = 4) -> None:
        self.device.write(0, offset, size, value)

    def irqs(self) -> int:
        try:
            return os.eventfd_read(self.trigger)
        except BlockingIOError:
            return 0

    def eoi(self) -> None:
        os.eventfd_write(self.resample, 1)
        self.reactor.run_once(0.5)


@pytest.fixture
def guest() -> Iterator:
    board = load_board()
    made: list[Guest] = []

    def open_guest(path: str) -> Guest:
        node = board.node(path)
        reactor = EpollReactor()
        clock = ManualClock()
        backend = open_sim_backend(node, reactor, clock)
        driver = default_registry(plugins=False).match(node.compatible)(node)
        device = VfioDevice(node, driver, backend, reactor)
        device.open()
        trigger = os.eventfd(0, os.EFD_NONBLOCK)
        resample = os.eventfd(0, os.EFD_NONBLOCK)
        device.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=[trigger])
        device.set_irqs(0, F.DATA_EVENTFD | F.ACTION_UNMASK, 0, 1, fds=[resample])
        made.append(Guest(device, backend, clock, reactor, trigger, resample))
        return made[-1]

    yield open_guest
    for g in made:
        g.device.close()
        g.reactor.close()
        os.close(g.trigger)
        os.close(g.resample)


def test_gpio_edge_interrupt_cycle(guest):
    g = guest(f"{SOC}/gpio@30000")
    model = g.backend.model
    g.w(0x404, 0x00, 1)                  # IS: edge
    g.w(0x40C, 0x01, 1)                  # IEV: rising
    g.w(0x410, 0x01, 1)                  # IE
    model.drive(0, True)
    assert g.irqs() == 1
    assert g.r(0x418, 1) == 0x01         # MIS
    g.w(0x41C, 0x01, 1)                  # IC
    g.eoi()
    assert g.irqs() == 0
    model.drive(0, False)
    model.drive(0, True)
    assert g.irqs() == 1
    g.w(0x400, 0x80, 1)                  # output on pin 7 through masked DATA
    g.w(0x80 << 2, 0xFF, 1)
    assert model.pins & 0x80


def test_gpio_level_interrupt_refires_at_eoi_until_the_pin_drops(guest):
    g = guest(f"{SOC}/gpio@30000")
    model = g.backend.model
    g.w(0x404, 0x02, 1)                  # pin 1 level
    g.w(0x40C, 0x02, 1)                  # high
    g.w(0x410, 0x02, 1)
    model.drive(1, True)
    assert g.irqs() == 1
    g.eoi()                              # still high: fires again
    assert g.irqs() == 1
    model.drive(1, False)
    g.eoi()
    assert g.irqs() == 0


def test_watchdog_interrupt_and_reset_output(guest):
    g = guest(f"{SOC}/watchdog@40000")
    model = g.backend.model
    assert g.r(0xC00) == 1               # driver reset left it locked
    g.w(0xC00, 0x1ACCE551)
    g.w(0x000, 1_000_000)                # 1 s at 1 MHz
    g.w(0x008, 0x3)
    g.w(0xC00, 0)
    g.clock.advance(1.0)
    assert g.irqs() == 1
    assert g.r(0x014) == 1
    g.clock.advance(1.00001)             # WdogLoad + 1 cycles after the interrupt
    assert model.reset_asserted
    g.device.reset()                     # VFIO_DEVICE_RESET
    assert not model.running and g.r(0x010) == 0
    g.eoi()
    assert g.irqs() == 0


def test_16550_thre_and_rx_cycle(guest):
    g = guest(f"{SOC}/serial@50000")
    model = g.backend.model
    g.w(0x0C, 0x83)                      # DLAB, 8N1
    g.w(0x00, 13)
    g.w(0x04, 0)
    g.w(0x0C, 0x03)
    g.w(0x08, 0x41)                      # FIFO on, RX trigger 4
    g.w(0x04, 0x03)                      # ERBFI | ETBEI
    assert g.irqs() == 1                 # THR empty
    assert g.r(0x08) & 0xF == 0x2
    for byte in b"ok\n":
        g.w(0x00, byte)
    g.eoi()
    g.clock.advance(0.01)
    assert model.take_tx() == b"ok\n"
    assert g.irqs() == 1                 # THR empty again
    assert g.r(0x08) & 0xF == 0x2
    g.eoi()
    model.inject_rx(b"abcd")
    assert g.irqs() == 1
    assert g.r(0x08) & 0xF == 0x4
    assert bytes(g.r(0x00) for _ in range(4)) == b"abcd"
    g.eoi()
    assert g.irqs() == 0


def test_rtc_region_maps_but_the_side_effect_page_stays_trapped(guest):
    g = guest(f"{SOC}/rtc@20000")
    info = g.device.region_info(0)
    assert not info.flags & RegionFlags.MMAP   # the page holds LR/ICR: nothing mappable
    source = g.backend.regions[0].map_source
    with mmap.mmap(source.fd, 4096, prot=mmap.PROT_READ) as view:
        before = struct.unpack_from("<I", view, 0)[0]
        g.clock.advance(2.0)
        assert struct.unpack_from("<I", view, 0)[0] == before + 2
        assert g.r(0x000) == before + 2
