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


def test_rtc_page_is_mapped_whole_and_acked_through_the_mapping(guest):
    """The PL031 page is offered whole (MMAP, no sparse areas). A guest driver that only
    touches the mapping (set alarm, read MIS, ack with ICR) and EOIs through the resample
    eventfd gets exactly one interrupt: the unmask takes over the mapped ICR write before
    it looks at the line."""
    g = guest(f"{SOC}/rtc@20000")
    info = g.device.region_info(0)
    assert info.flags == RegionFlags.READ | RegionFlags.WRITE | RegionFlags.MMAP
    assert info.sparse_areas is None and info.map_source is not None
    source = info.map_source
    with mmap.mmap(source.fd, 4096, offset=source.offset) as regs:
        def r(offset: int) -> int:
            return struct.unpack_from("<I", regs, offset)[0]

        def w(offset: int, value: int) -> None:
            struct.pack_into("<I", regs, offset, value)

        trapped_before = g.device.stats.backend_reads + g.device.stats.backend_writes
        now = r(0x000)
        g.clock.advance(2.0)
        assert r(0x000) == now + 2                    # DR moves in the mapping
        w(0x004, now + 4)                             # RTCMR (pl031_set_alarm)
        w(0x01C, 1)                                   # RTCICR (pl031_alarm_irq_enable)
        w(0x010, r(0x010) | 1)                        # RTCIMSC
        g.clock.advance(1.0)                          # tick: writes taken over
        assert g.irqs() == 0
        assert (r(0x004), r(0x010), r(0x01C)) == (now + 4, 1, 0)
        g.clock.advance(1.0)                          # the match second
        assert g.irqs() == 1
        assert r(0x018) == 1 and r(0x014) == 1        # pl031_interrupt reads MIS
        w(0x01C, 1)                                   # ... and acks through the mapping
        g.eoi()                                       # resample -> unmask -> reconcile
        assert g.irqs() == 0                          # no spurious re-fire
        assert not g.backend.line(0)
        assert (r(0x014), r(0x018), r(0x01C)) == (0, 0, 0)
        assert g.device.stats.irqs[0].unmasks == 1 and g.device.stats.irqs[0].delivered == 1
        g.clock.advance(5.0)
        assert g.irqs() == 0
        # not one access went through the VFIO device
        assert g.device.stats.backend_reads + g.device.stats.backend_writes == trapped_before
