"""The VFIO device driven the way a guest driver drives it, over the simulated board.

Every register access goes through :class:`VfioDevice` (so through the driver's traps),
every interrupt arrives on a real eventfd, and the model's host side (UART TX bytes, RX
input, RTC time) is the observable output. The models run on a ManualClock so the tests
are exact and take no wall time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from vfio_testbed import LineBackend, drain

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import DeviceTree
from platpass.firmware.model import DeviceNode
from platpass.host.simulated import ManualClock, SimulatedBackend
from platpass.host.simulated.board import MODEL_FACTORIES, load_board, open_sim_backend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import DeviceFlags, IrqInfoFlags, RegionFlags
from platpass.vfio_device.uapi import IrqSetFlags as F

# PL011 registers and bits (ARM DDI 0183).
DR, FR, IBRD, FBRD, LCR_H, CR, IFLS, IMSC, RIS, MIS, ICR, DMACR = (
    0x00, 0x18, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38, 0x3C, 0x40, 0x44, 0x48)
FR_RXFE, FR_TXFE, FR_BUSY = 1 << 4, 1 << 7, 1 << 3
LCR_FEN_WLEN8 = (1 << 4) | (3 << 5)
CR_UARTEN_TXE_RXE = (1 << 0) | (1 << 8) | (1 << 9)
RXIM, TXIM, RTIM = 1 << 4, 1 << 5, 1 << 6
# PL031 registers (ARM DDI 0224).
RTC_DR, RTC_MR, RTC_IMSC, RTC_RIS, RTC_MIS, RTC_ICR = 0x00, 0x04, 0x10, 0x14, 0x18, 0x1C

SOC = "/soc@9000000"


@pytest.fixture(scope="module")
def board() -> DeviceTree:
    return load_board()


def driver_for(node: DeviceNode) -> PlatformDriver:
    """The registry's driver for the node; the common base until the family's own lands."""
    cls = default_registry().match(node.compatible)
    return (cls or PlatformDriver)(node)


@dataclass
class Guest:
    device: VfioDevice
    backend: SimulatedBackend
    clock: ManualClock
    reactor: EpollReactor
    trigger: int
    resample: int

    def r(self, offset: int) -> int:
        return self.device.read(0, offset, 4)

    def w(self, offset: int, value: int) -> None:
        self.device.write(0, offset, 4, value)

    def irqs(self) -> int:
        """Interrupts delivered since the last call."""
        return drain(self.trigger)

    def eoi(self) -> None:
        """The guest's EOI: KVM signals the resampler, the device unmasks."""
        os.eventfd_write(self.resample, 1)
        self.reactor.run_once(0.5)


@pytest.fixture
def guest(board: DeviceTree) -> Iterator[Callable[[str], Guest]]:
    made: list[Guest] = []

    def open_guest(path: str) -> Guest:
        node = board.node(path)
        reactor = EpollReactor()
        clock = ManualClock()
        backend = open_sim_backend(node, reactor, clock=clock)
        device = VfioDevice(node, driver_for(node), backend, reactor)
        device.open()
        trigger = os.eventfd(0, os.EFD_NONBLOCK)
        resample = os.eventfd(0, os.EFD_NONBLOCK)
        device.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=[trigger])
        device.set_irqs(0, F.DATA_EVENTFD | F.ACTION_UNMASK, 0, 1, fds=[resample])
        g = Guest(device, backend, clock, reactor, trigger, resample)
        made.append(g)
        return g

    yield open_guest
    for g in made:
        g.device.close()
        g.reactor.close()
        os.close(g.trigger)
        os.close(g.resample)


def test_sim_devices_describe_themselves_as_vfio_platform_devices(
        guest: Callable[[str], Guest]) -> None:
    uart = guest(f"{SOC}/serial@0")
    info = uart.device.info
    assert info.flags == DeviceFlags.PLATFORM | DeviceFlags.RESET
    assert (info.num_regions, info.num_irqs) == (1, 1)
    irq = uart.device.irq_info(0)
    assert irq.flags == IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | IrqInfoFlags.AUTOMASKED
    # The simulated PL011 keeps FIFO registers (and the driver's UARTDMACR trap) on its
    # only page, so it may not be mapped: every access reaches the model.
    region = uart.device.region_info(0)
    assert region.flags == RegionFlags.READ | RegionFlags.WRITE
    assert (region.size, region.sparse_areas, region.map_source) == (0x1000, None, None)
    # The simulated PL031 declares no side-effect range (mapped writes are reconciled at
    # event boundaries) and its driver no trap: its page is offered whole, with the memfd.
    rtc = guest(f"{SOC}/rtc@20000")
    region = rtc.device.region_info(0)
    assert region.flags == RegionFlags.READ | RegionFlags.WRITE | RegionFlags.MMAP
    assert (region.size, region.sparse_areas) == (0x1000, None)
    assert region.map_source is not None and region.map_source.fd == rtc.backend.memfd


def setup_uart(g: Guest) -> None:
    """What amba-pl011's startup does: 115200 8N1 from the 24 MHz UARTCLK, FIFOs on."""
    g.w(CR, 0)
    g.w(IBRD, 13)
    g.w(FBRD, 1)
    g.w(LCR_H, LCR_FEN_WLEN8)
    g.w(ICR, 0x7FF)
    g.w(CR, CR_UARTEN_TXE_RXE)


def test_pl011_tx_interrupt_cycle(guest: Callable[[str], Guest]) -> None:
    g = guest(f"{SOC}/serial@0")
    setup_uart(g)
    message = b"platpass says hello over a PL011, through VFIO!!"  # 48 bytes
    # Prime the FIFO, then unmask TXIM (the TX interrupt fires on passing the trigger).
    for byte in message[:32]:
        g.w(DR, byte)
    g.w(IMSC, TXIM)
    assert g.irqs() == 0
    g.clock.advance(2e-3)  # 16+ characters leave (87 us each): the FIFO passes the trigger
    assert g.irqs() == 1
    assert g.device.irqs.lines[0].masked  # automasked: level line waits for UNMASK
    assert g.r(MIS) & TXIM
    # The handler refills the FIFO (which clears TX) and EOIs.
    for byte in message[32:]:
        g.w(DR, byte)
    assert not g.r(MIS) & TXIM
    g.eoi()
    assert g.irqs() == 0 and not g.device.irqs.lines[0].masked
    g.clock.advance(0.1)  # the FIFO drains below the trigger again
    assert g.irqs() == 1
    # Nothing more to send: mask TXIM, clear it with ICR, EOI.
    g.w(IMSC, 0)
    g.w(ICR, TXIM)
    g.eoi()
    g.clock.advance(0.1)
    assert g.irqs() == 0
    assert g.backend.model.take_tx() == message  # type: ignore[attr-defined]
    assert g.r(FR) & FR_TXFE and not g.r(FR) & FR_BUSY
    stats = g.device.stats
    assert stats.irqs[0].delivered == 2 and stats.irqs[0].unmasks == 2
    assert stats.trapped_reads + stats.backend_reads > 0


def test_pl011_rx_level_interrupt_fires_again_until_serviced(
        guest: Callable[[str], Guest]) -> None:
    g = guest(f"{SOC}/serial@0")
    setup_uart(g)
    g.w(IMSC, RXIM | RTIM)
    g.backend.model.inject_rx(b"abc")  # type: ignore[attr-defined]
    assert g.irqs() == 0  # below the RX trigger level: only the timeout will fire
    g.clock.advance(1e-3)  # 32 bit periods of silence
    assert g.irqs() == 1
    assert g.r(MIS) & RTIM
    # The guest EOIs without reading the FIFO: the line is still high, so it fires again.
    g.eoi()
    assert g.irqs() == 1
    assert g.device.irqs.lines[0].masked
    # Now it services the interrupt: drains the FIFO (which clears RT), then EOIs.
    received = bytearray()
    while not g.r(FR) & FR_RXFE:
        received.append(g.r(DR) & 0xFF)
    assert received == b"abc"
    assert g.r(MIS) == 0
    g.eoi()
    assert g.irqs() == 0 and not g.device.irqs.lines[0].masked


def test_pl011_reset_leaves_nothing_for_the_next_guest(guest: Callable[[str], Guest]) -> None:
    g = guest(f"{SOC}/serial@0")
    setup_uart(g)
    g.w(IMSC, RXIM | RTIM)
    g.backend.model.inject_rx(b"secret")  # type: ignore[attr-defined]
    g.device.client_gone()
    assert g.device.irqs.lines[0].trigger_fd is None
    g.device.open()  # the next client: the driver quiesces the UART
    assert g.r(IMSC) == 0 and g.r(CR) & 1 == 0
    assert g.r(FR) & FR_RXFE  # the previous guest's bytes are gone
    assert g.irqs() == 0


def test_pl011_dmacr_is_trapped_and_reads_zero(guest: Callable[[str], Guest]) -> None:
    for path in (f"{SOC}/serial@0", f"{SOC}/serial@10000"):  # without and with ``dmas``
        g = guest(path)
        assert type(g.device.driver).__name__ == "ArmPl011"
        before = g.device.stats.trapped_writes
        g.w(DMACR, 0x7)  # TXDMAE | RXDMAE | DMAONERR
        assert g.r(DMACR) == 0
        assert g.backend.model.dmacr == 0  # type: ignore[attr-defined]
        assert g.device.stats.trapped_writes == before + 1
        # A wide access over the trap reaches the model only for the untrapped half.
        g.device.write(0, DMACR, 8, 0x0000_0000_0000_0007)
        assert g.backend.model.dmacr == 0  # type: ignore[attr-defined]


def test_real_hardware_layout_maps_the_pl031_and_traps_the_pl011(
        board: DeviceTree, reactor: EpollReactor) -> None:
    """With a backend that has no side-effect registers (real MMIO), only the drivers'
    traps decide: the PL031 page is mapped whole, the PL011 page (UARTDMACR) never."""
    rtc = board.node(f"{SOC}/rtc@20000")
    uart = board.node(f"{SOC}/serial@0")
    rtc_dev = VfioDevice(rtc, driver_for(rtc), LineBackend(), reactor)
    uart_dev = VfioDevice(uart, driver_for(uart), LineBackend(), reactor)
    mapped, trapped = rtc_dev.region_info(0), uart_dev.region_info(0)
    assert mapped.flags == RegionFlags.READ | RegionFlags.WRITE | RegionFlags.MMAP
    assert mapped.sparse_areas is None and mapped.map_source is not None
    assert trapped.flags == RegionFlags.READ | RegionFlags.WRITE
    assert trapped.map_source is None
    # The same PL031 behind a page it shares with another device is never mapped.
    shared = VfioDevice(rtc, driver_for(rtc), LineBackend(), reactor, force_trap_all=True)
    assert not shared.region_info(0).mappable
    for device in (rtc_dev, uart_dev, shared):
        device.close()


def test_pl031_match_interrupt(guest: Callable[[str], Guest]) -> None:
    g = guest(f"{SOC}/rtc@20000")
    now = g.r(RTC_DR)
    g.w(RTC_MR, now + 2)
    g.w(RTC_IMSC, 1)
    g.clock.advance(1.0)
    assert g.irqs() == 0
    g.clock.advance(1.0)
    assert g.r(RTC_DR) == now + 2
    assert g.irqs() == 1
    assert g.r(RTC_MIS) == 1
    g.eoi()  # not yet cleared: the level line fires again
    assert g.irqs() == 1
    g.w(RTC_ICR, 1)
    assert g.r(RTC_RIS) == 0
    g.eoi()
    assert g.irqs() == 0
    g.clock.advance(5.0)
    assert g.irqs() == 0
    assert g.r(RTC_DR) == now + 7


def test_loopback_on_a_sim_device(guest: Callable[[str], Guest]) -> None:
    g = guest(f"{SOC}/rtc@20000")
    g.device.set_irqs(0, F.DATA_NONE | F.ACTION_TRIGGER, 0, 1)
    assert g.irqs() == 1
    assert g.device.irqs.lines[0].masked
    g.eoi()  # the RTC itself is quiet: nothing more
    assert g.irqs() == 0


def modelled_nodes() -> list[str]:
    """Every enabled node of the simulated board that has a model behind it."""
    return [n.path for n in load_board().devices()
            if n.is_mmio and any(c in MODEL_FACTORIES for c in n.compatible)]


@pytest.mark.parametrize("path", modelled_nodes())
def test_every_modelled_board_device_is_a_consistent_vfio_device(
        board: DeviceTree, reactor: EpollReactor, path: str) -> None:
    node = board.node(path)
    backend = open_sim_backend(node, reactor, clock=ManualClock())
    device = VfioDevice(node, driver_for(node), backend, reactor)
    try:
        assert type(device.driver) is not PlatformDriver, "no register-level driver"
        device.open()
        info = device.info
        assert info.flags == DeviceFlags.PLATFORM | DeviceFlags.RESET
        assert (info.num_regions, info.num_irqs) == (len(node.regions), len(node.interrupts))
        for index in range(info.num_regions):
            region = device.region_info(index)
            assert region.size == node.regions[index].size
            for trap in device.driver.active_traps():  # no trap ever sits on a mapped page
                for area in region.sparse_areas or ():
                    assert not (area.offset < trap.offset + trap.size
                                and trap.offset < area.offset + area.size)
                if region.mappable and region.sparse_areas is None:
                    assert trap.region != index
        for index in range(info.num_irqs):
            assert device.irq_info(index).flags & IrqInfoFlags.AUTOMASKED  # level lines
        # A quiesced device after open: its line is low, so a fresh trigger gets nothing.
        efd = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            device.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=[efd])
            assert drain(efd) == 0
        finally:
            os.close(efd)
        device.reset()
    finally:
        device.close()
    assert device.closed
