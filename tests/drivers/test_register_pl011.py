"""The PL011 driver: UARTDMACR never reaches the device; reset leaves nothing behind."""

from __future__ import annotations

import pytest
from register_bench import SOC, DeadBus, open_bench

from platpass.drivers.arm_pl011 import ArmPl011, Reg
from platpass.host.simulated.board import load_board
from platpass.vfio_device.device import VfioDevice

FR_TXFE_RXFE = 0x90


@pytest.fixture
def bench():
    b = open_bench(f"{SOC}/serial@10000")        # the UART with dmas
    yield b
    b.close()


def test_registry_picks_the_pl011_driver(bench):
    assert isinstance(bench.driver, ArmPl011)
    assert bench.driver.cannot_master_bus
    assert "amba-pl011.c" in bench.driver.evidence


def test_dmacr_trapped_on_every_node_not_only_with_dmas(bench):
    (trap,) = bench.driver.active_traps()
    assert (trap.offset, trap.size, trap.name) == (Reg.DMACR, 4, "UARTDMACR")
    plain = open_bench(f"{SOC}/serial@0")
    try:
        assert "dmas" not in plain.node.properties
        assert plain.driver.active_traps() == (trap,)
    finally:
        plain.close()


def test_guest_dmacr_write_never_reaches_the_device(bench):
    device = VfioDevice(bench.node, bench.driver, bench.backend, bench.reactor)
    model = bench.backend.model
    for size in (4, 2, 1):
        device.write(0, Reg.DMACR, size, 0x7)
    assert model.dmacr == 0
    assert device.stats.trapped_writes == 3
    bench.backend.write(0, Reg.DMACR, 4, 0x3)     # say the host had left it on
    assert device.read(0, Reg.DMACR, 4) == 0      # the guest still reads zero
    device.write(0, Reg.DMACR, 8, 0x7)            # an 8-byte write covering DMACR
    assert model.dmacr == 0x3
    device.reset()
    assert model.dmacr == 0                       # reset switches the requests off
    region = device.region_info(0)
    mapped = region.sparse_areas or ()
    assert not any(a.offset <= Reg.DMACR < a.offset + a.size for a in mapped)
    device.close()


def dirty(bench) -> None:
    """What a guest can leave behind: config, masks, pending interrupts, both FIFOs full
    of its data, an error, DMA requests on."""
    regs = bench.backend
    regs.write(0, Reg.IBRD, 4, 13)
    regs.write(0, Reg.FBRD, 4, 1)
    regs.write(0, Reg.LCR_H, 4, 0x70)
    regs.write(0, Reg.IFLS, 4, 0x24)
    regs.write(0, Reg.CR, 4, 0x301)
    regs.write(0, Reg.IMSC, 4, 0x7FF)
    bench.backend.model.inject_rx(b"secret guest input, more than 32 bytes of it")
    regs.write(0, Reg.CR, 4, 0x201)               # TX off: its bytes stay queued
    for byte in b"pending output":
        regs.write(0, Reg.DR, 4, byte)
    regs.write(0, Reg.DMACR, 4, 0x7)
    assert bench.backend.line(0)


def test_reset_leaves_no_guest_state(bench):
    dirty(bench)
    model = bench.backend.model
    bench.driver.reset(bench.backend)
    regs = bench.backend
    assert regs.read(0, Reg.FR, 4) == FR_TXFE_RXFE
    assert not model.rx_fifo and not model.tx_fifo
    assert regs.read(0, 0x3C, 4) == 0             # RIS
    assert regs.read(0, Reg.IMSC, 4) == 0
    assert regs.read(0, Reg.RSR_ECR, 4) == 0
    assert regs.read(0, Reg.DMACR, 4) == 0
    assert regs.read(0, Reg.CR, 4) == 0x300       # reset value: UART off
    assert regs.read(0, Reg.IFLS, 4) == 0x12
    assert (regs.read(0, Reg.IBRD, 4), regs.read(0, Reg.FBRD, 4)) == (0, 0)
    assert not bench.backend.line(0)
    # The next guest enables the UART: nothing of the last one comes out or comes in.
    regs.write(0, Reg.CR, 4, 0x301)
    bench.clock.advance(1.0)
    assert model.tx_output == b""
    assert regs.read(0, Reg.FR, 4) & 0x10


def test_reset_through_the_vfio_device_open(bench):
    device = VfioDevice(bench.node, bench.driver, bench.backend, bench.reactor)
    dirty(bench)
    device.open()
    assert bench.backend.read(0, Reg.FR, 4) == FR_TXFE_RXFE
    assert not bench.backend.line(0)
    device.close()


def test_reset_is_bounded_on_a_dead_device():
    bus = DeadBus(value=0)                        # FR never shows RXFE
    ArmPl011(load_board().node(f"{SOC}/serial@0")).reset(bus)
    assert bus.reads <= 2 * 64
    assert bus.writes[0] == (Reg.IMSC, 0)
    assert bus.writes[-1] == (Reg.CR, 0x300)
