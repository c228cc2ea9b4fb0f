"""The PCI personality: the type-0 header (pure), the ID table's layout matching, and the
VFIO PCI view of a real simulated 16550 (region/IRQ layout vfio-pci reports, BAR padding,
memory decode gating, INTx through Interrupt Disable, traps and sparse mmap kept)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from vfio_testbed import LineBackend, QuietDriver, make_node

from platpass.drivers.registry import default_registry
from platpass.errors import VfioError
from platpass.firmware import devicetree
from platpass.firmware.model import Trigger
from platpass.firmware.verdict import assess_tree
from platpass.host.simulated import ManualClock
from platpass.host.simulated.board import board_dts_path, load_board, open_sim_backend
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.pci.config_space import (
    Command,
    ConfigSpace,
    Identity,
    Reg,
    Status,
    bar_size_for,
)
from platpass.vfio_device.pci.device import (
    CONFIG_REGION_INDEX,
    NUM_IRQS,
    NUM_REGIONS,
    PciPersonalityError,
    PciVfioDevice,
)
from platpass.vfio_device.pci.ids import PCI_ID_TABLE, PciIdError, choose_identity
from platpass.vfio_device.regions import SparseArea
from platpass.vfio_device.uapi import DeviceFlags, IrqInfoFlags, RegionFlags
from platpass.vfio_device.uapi import IrqSetFlags as F

PCI_BOARD = board_dts_path("sim-pci-uart.dts")
UART = "/soc@9000000/serial@50000"
IDENT = Identity(0x115D, 0x0101, 0x115D, 0x0101, 0x070002, revision=1)


# ------------------------------------------------------------------ config space (pure)

def test_header_fields_read_only():
    cfg = ConfigSpace(IDENT, [0x1000])
    assert cfg.read(0, 4) == 0x0101115D
    assert cfg.read(Reg.REVISION, 4) == 0x07000201
    assert cfg.read(Reg.HEADER_TYPE, 1) == 0
    assert cfg.read(Reg.SUBSYSTEM_VENDOR_ID, 4) == 0x0101115D
    assert cfg.read(Reg.INTERRUPT_PIN, 1) == 1
    assert cfg.read(Reg.CAPABILITIES, 1) == 0
    before = cfg.snapshot()
    for offset in (0x00, 0x08, 0x0C, 0x28, 0x2C, 0x30, 0x34, 0x3C, 0x3D, 0x40, 0xFC):
        cfg.write(offset, 4, 0xFFFFFFFF) if offset % 4 == 0 else cfg.write(offset, 1, 0xFF)
    after = cfg.snapshot()
    changed = [i for i in range(256) if before[i] != after[i]]
    assert changed == [0x3C]  # only the interrupt line scratch byte (0x3C) is writable


def test_bar_sizing_with_all_ones_probe():
    cfg = ConfigSpace(IDENT, [0x1000, 0x20])
    cfg.write(Reg.BAR0, 4, 0xFFFFFFFF)
    assert cfg.read(Reg.BAR0, 4) == 0xFFFFF000  # memory, 32-bit, non-prefetchable
    cfg.write(Reg.BAR0 + 4, 4, 0xFFFFFFFF)
    assert cfg.read(Reg.BAR0 + 4, 4) == 0xFFFFFFE0
    cfg.write(Reg.BAR0 + 8, 4, 0xFFFFFFFF)        # absent BAR2
    assert cfg.read(Reg.BAR0 + 8, 4) == 0
    cfg.write(Reg.BAR0, 4, 0xFEBF1234)
    assert cfg.bar_address(0) == 0xFEBF1000
    cfg.write(Reg.BAR0 + 2, 2, 0xABCD)            # byte-lane writes merge
    assert cfg.read(Reg.BAR0, 4) == 0xABCD1000


def test_command_writable_bits_and_callback():
    seen = []
    cfg = ConfigSpace(IDENT, [0x1000], on_command=lambda old, new: seen.append((old, new)))
    cfg.write(Reg.COMMAND, 2, 0xFFFF)
    assert cfg.read(Reg.COMMAND, 2) == Command.MEMORY | Command.INTX_DISABLE
    assert not cfg.read(Reg.COMMAND, 2) & Command.MASTER  # never a bus master
    assert cfg.memory_enabled and cfg.intx_disabled
    assert seen == [(0, 0x402)]
    cfg.write(Reg.COMMAND, 1, 0x02)                # low byte only: INTx disable kept
    assert seen == [(0, 0x402)]
    cfg.reset()
    assert cfg.command == 0 and seen[-1] == (0x402, 0)


def test_status_interrupt_bit_follows_line():
    level = [False]
    cfg = ConfigSpace(IDENT, [0x1000], interrupt_status=lambda: level[0])
    assert not cfg.read(Reg.STATUS, 2) & Status.INTERRUPT
    level[0] = True
    assert cfg.read(Reg.STATUS, 2) & Status.INTERRUPT
    assert cfg.read(Reg.COMMAND, 4) >> 16 & Status.INTERRUPT
    assert cfg.read(Reg.STATUS, 1) == Status.INTERRUPT
    assert not cfg.read(Reg.STATUS, 2) & Status.CAP_LIST


@pytest.mark.parametrize("offset,size", [(1, 2), (2, 4), (0, 8), (0, 3), (255, 2), (256, 1),
                                         (-1, 1)])
def test_bad_config_access_is_einval(offset, size):
    cfg = ConfigSpace(IDENT, [0x1000])
    with pytest.raises(VfioError) as err:
        cfg.read(offset, size)
    assert err.value.errno == errno.EINVAL


def test_bar_size_rounding():
    assert [bar_size_for(n) for n in (1, 8, 16, 0x20, 0x21, 0x1000, 0x1001)] == \
        [16, 16, 16, 0x20, 0x40, 0x1000, 0x2000]
    with pytest.raises(ValueError):
        ConfigSpace(IDENT, [0x30])


# ------------------------------------------------------------------ the ID table

def _assessed(path: Path | None, node_path: str):
    tree = devicetree.load_dts(path) if path else load_board()
    registry = default_registry(plugins=False)
    assessment = {a.node.path: a for a in assess_tree(tree, registry)}[node_path]
    return assessment, assessment.driver(assessment.node)


def test_auto_picks_the_verified_16550_entry():
    assessment, driver = _assessed(PCI_BOARD, UART)
    assert assessment.verdict.assignable
    identity, why = choose_identity(assessment.node, driver, "auto")
    assert (identity.vendor, identity.device) == (0x115D, 0x0101)
    assert identity.class_code == 0x070002 and "8250_pci" in why


def test_layout_no_entry_matches_is_refused():
    # The built-in board's 16550: reg-shift 2, 32-bit accesses, 24 MHz.
    assessment, driver = _assessed(None, UART)
    with pytest.raises(PciIdError) as err:
        choose_identity(assessment.node, driver, "auto")
    assert "reg-shift 2, 4-byte accesses, 24000000 Hz" in str(err.value)
    assert "expects reg-shift 0, 1-byte accesses, 1843200 Hz" in str(err.value)
    with pytest.raises(PciIdError):  # asking for the table's ID does not bypass the check
        choose_identity(assessment.node, driver, "115d:0101")


def test_other_families_have_no_entry():
    assessment, driver = _assessed(None, "/soc@9000000/rtc@20000")
    with pytest.raises(PciIdError, match="no PCI identity fits arm-pl031"):
        choose_identity(assessment.node, driver, "auto")


def test_explicit_unknown_id_and_bad_spelling():
    assessment, driver = _assessed(PCI_BOARD, UART)
    identity, why = choose_identity(assessment.node, driver, "1234:abcd")
    assert (identity.vendor, identity.device, identity.class_code) == (0x1234, 0xABCD,
                                                                       0xFF0000)
    assert "not in platpass's table" in why
    for bad in ("1234", "ffff:0001", "12345:1", "x:y"):
        with pytest.raises(PciIdError):
            choose_identity(assessment.node, driver, bad)


def test_table_entries_are_well_formed():
    names = {d.name for d in default_registry(plugins=False).drivers}
    for entry in PCI_ID_TABLE:
        assert set(entry.drivers) <= names
        assert entry.linux_driver and entry.identity.vendor not in (0, 0xFFFF)


# ------------------------------------------------------------------ the VFIO PCI view

@pytest.fixture
def pci() -> Iterator[PciVfioDevice]:
    assessment, driver = _assessed(PCI_BOARD, UART)
    reactor = EpollReactor()
    backend = open_sim_backend(assessment.node, reactor, ManualClock())
    inner = VfioDevice(assessment.node, driver, backend, reactor)
    device = PciVfioDevice(inner, choose_identity(assessment.node, driver)[0])
    device.open()
    yield device
    device.close()
    reactor.close()


def test_layout_as_vfio_pci_reports_it(pci):
    assert pci.info.flags == DeviceFlags.PCI | DeviceFlags.RESET
    assert (pci.info.num_regions, pci.info.num_irqs) == (NUM_REGIONS, NUM_IRQS) == (9, 5)
    bar0 = pci.region_info(0)
    assert bar0.size == 0x1000 and bar0.flags & RegionFlags.READ | RegionFlags.WRITE
    assert [pci.region_info(i).size for i in (1, 2, 3, 4, 5, 6, 8)] == [0] * 7
    assert pci.region_info(CONFIG_REGION_INDEX).size == 256
    intx = pci.irq_info(0)
    assert intx.count == 1
    assert intx.flags == IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | IrqInfoFlags.AUTOMASKED
    for index in (1, 2, 3, 4):
        assert pci.irq_info(index).count == 0
        assert pci.irq_info(index).flags == IrqInfoFlags.EVENTFD | IrqInfoFlags.NORESIZE
        pci.set_irqs(index, F.DATA_NONE | F.ACTION_TRIGGER, 0, 0)  # disable: accepted
        with pytest.raises(VfioError):
            pci.set_irqs(index, F.DATA_NONE | F.ACTION_TRIGGER, 0, 1)
    with pytest.raises(VfioError):
        pci.region_info(9)
    with pytest.raises(VfioError):
        pci.irq_info(5)


def test_bar_gated_by_memory_enable(pci):
    with pytest.raises(VfioError) as err:
        pci.read(0, 7, 1)
    assert err.value.errno == errno.EIO
    pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY)
    pci.write(0, 7, 1, 0x5A)                   # SCR
    assert pci.read(0, 7, 1) == 0x5A
    assert pci.inner.read(0, 7, 1) == 0x5A     # the same register behind the BAR


def test_intx_through_interrupt_disable_and_status(pci):
    trigger = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        pci.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=[trigger])
        pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY)
        assert not pci.read(CONFIG_REGION_INDEX, Reg.STATUS, 2) & Status.INTERRUPT
        pci.write(0, 1, 1, 0x02)               # IER: THR empty -> line asserted
        assert os.eventfd_read(trigger) == 1
        assert pci.read(CONFIG_REGION_INDEX, Reg.STATUS, 2) & Status.INTERRUPT
        assert pci.irqs.lines[0].masked        # automasked
        pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY | Command.INTX_DISABLE)
        pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY)  # unmask: fires again
        assert os.eventfd_read(trigger) == 1
        pci.write(0, 1, 1, 0x00)
        pci.set_irqs(0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
        assert not pci.read(CONFIG_REGION_INDEX, Reg.STATUS, 2) & Status.INTERRUPT
        with pytest.raises(BlockingIOError):
            os.eventfd_read(trigger)
    finally:
        os.close(trigger)


def test_client_gone_resets_header_keeps_registers(pci):
    pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY)
    pci.write(0, 7, 1, 0xA5)
    pci.client_gone()
    assert pci.read(CONFIG_REGION_INDEX, Reg.COMMAND, 2) == 0
    pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY)
    assert pci.read(0, 7, 1) == 0xA5


def _pl011_pci(path: str) -> tuple[VfioDevice, EpollReactor]:
    tree = load_board()
    node = tree.node(path)
    reactor = EpollReactor()
    backend = open_sim_backend(node, reactor, ManualClock())
    driver = default_registry(plugins=False).match(node.compatible)(node)
    return VfioDevice(node, driver, backend, reactor), reactor


def test_traps_and_sparse_mmap_kept_behind_the_bar():
    inner, reactor = _pl011_pci("/soc@9000000/serial@10000")  # UARTDMACR trapped
    try:
        pci = PciVfioDevice(inner, IDENT)
        pci.open()
        assert pci.region_info(0).flags == inner.region_info(0).flags
        assert pci.region_info(0).sparse_areas == inner.region_info(0).sparse_areas
        pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY)
        before = inner.stats.trapped_writes
        pci.write(0, 0x48, 4, 0x3)                   # UARTDMACR: trapped, ignored
        assert inner.stats.trapped_writes == before + 1
        assert pci.read(0, 0x48, 4) == 0
        pci.close()
    finally:
        reactor.close()


def test_padding_past_a_small_region_reads_zero_and_is_not_mapped():
    src = PCI_BOARD.read_text().replace("reg = <0x50000 0x1000>", "reg = <0x50000 0x18>")
    tree = devicetree.load_dts_source(src)
    node = tree.node(UART)
    reactor = EpollReactor()
    try:
        backend = open_sim_backend(node, reactor, ManualClock())
        driver = default_registry(plugins=False).match(node.compatible)(node)
        pci = PciVfioDevice(VfioDevice(node, driver, backend, reactor), IDENT)
        pci.open()
        assert pci.region_info(0).size == 0x20
        assert not pci.region_info(0).flags & RegionFlags.MMAP
        pci.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, Command.MEMORY)
        pci.write(0, 0x18, 8, 0xFFFFFFFFFFFFFFFF)  # padding: ignored
        assert pci.read(0, 0x18, 8) == 0
        assert pci.read(0, 0x1C, 4) == 0
        pci.close()
    finally:
        reactor.close()


def test_whole_region_mappable_bar_padding_gets_sparse_area():
    from platpass.vfio_device.pci import device as pci_device
    from platpass.vfio_device.regions import RegionInfo

    class Fake:
        def __init__(self, info: RegionInfo) -> None:
            self._info = info

        def region_info(self, index: int) -> RegionInfo:
            return self._info

    info = RegionInfo(0, RegionFlags.READ | RegionFlags.WRITE | RegionFlags.MMAP, 0x3000,
                      None, None)
    pci = object.__new__(pci_device.PciVfioDevice)
    pci.inner = Fake(info)  # type: ignore[assignment]
    pci._bar_sizes = (0x4000,)
    pci._bar_offsets = (0,)
    built = pci._build_region(0)
    assert built.size == 0x4000 and built.sparse_areas == (SparseArea(0, 0x3000),)
    assert built.flags & RegionFlags.CAPS


@pytest.mark.parametrize("triggers,sizes,reason", [
    ((Trigger.LEVEL_HIGH, Trigger.LEVEL_HIGH), (0x1000,), "2 interrupt lines"),
    ((Trigger.EDGE_RISING,), (0x1000,), "edge-triggered"),
    ((Trigger.LEVEL_HIGH,), (0x1000,) * 7, "7 MMIO regions"),
])
def test_refusals(triggers, sizes, reason, reactor):
    node = make_node(triggers, regions=tuple((0x9000000 + i * 0x1000, s)
                                             for i, s in enumerate(sizes)))
    backend = LineBackend(sizes, irq_count=len(triggers))
    inner = VfioDevice(node, QuietDriver(node), backend, reactor)
    try:
        with pytest.raises(PciPersonalityError, match=reason):
            PciVfioDevice(inner, IDENT)
    finally:
        inner.close()


def test_linebackend_intx_status_from_automask(reactor):
    node = make_node()
    backend = LineBackend()
    pci = PciVfioDevice(VfioDevice(node, QuietDriver(node), backend, reactor), IDENT)
    pci.open()
    trigger = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        pci.set_irqs(0, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=[trigger])
        backend.raise_line(0)
        assert os.eventfd_read(trigger) == 1
        assert pci.read(CONFIG_REGION_INDEX, Reg.STATUS, 2) & Status.INTERRUPT
        backend.lower_line(0)
        pci.set_irqs(0, F.DATA_NONE | F.ACTION_UNMASK, 0, 1)
        assert not pci.read(CONFIG_REGION_INDEX, Reg.STATUS, 2) & Status.INTERRUPT
    finally:
        os.close(trigger)
        pci.close()


# ------------------------------------------------------------------ platpass serve --pci

def test_serve_pci_refuses_a_layout_with_the_reason(tmp_path, capsys):
    from platpass.cli import main

    rc = main(["serve", "--sim", UART, "--pci", "auto", "--socket", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "no PCI identity fits ns16550 with reg-shift 2, 4-byte accesses" in err
    assert not (tmp_path / "s").exists()


def test_serve_pci_with_uart_output_end_to_end(tmp_path):
    """The README's server: a vfio-user client enables memory decoding in config space and
    writes the THR through BAR0; the byte lands in --uart-output."""
    import subprocess
    import sys
    import time

    from platpass.vfio_user.client import VfioUserClient

    sock, out = tmp_path / "uart.sock", tmp_path / "uart.out"
    proc = subprocess.Popen([sys.executable, "-m", "platpass", "serve", "--dts", str(PCI_BOARD),
                             "--backend", "sim", UART, "--pci", "auto", "--socket", str(sock),
                             "--uart-output", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert "PCI personality 115d:0101" in lines[0] and lines[3] == "ready\n", lines
        with VfioUserClient.connect(sock) as client:
            assert client.read(CONFIG_REGION_INDEX, 0, 4) == 0x0101115D
            client.write(CONFIG_REGION_INDEX, Reg.COMMAND, 2, int(Command.MEMORY))
            client.write(0, 2, 1, 0x01)                    # FCR: FIFOs on (16 deep)
            for byte in b"hi\n":
                client.write(0, 0, 1, byte)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and out.read_bytes() != b"hi\n":
                time.sleep(0.05)
        assert out.read_bytes() == b"hi\n"
    finally:
        proc.terminate()
        proc.wait(10)


def test_auto_picks_by_clock():
    src = PCI_BOARD.read_text().replace("clock-frequency = <1843200>",
                                        "clock-frequency = <14745600>")
    tree = devicetree.load_dts_source(src)
    node = tree.node(UART)
    driver = default_registry(plugins=False).match(node.compatible)(node)
    identity, why = choose_identity(node, driver, "auto")
    assert (identity.vendor, identity.device) == (0x14D2, 0xA001) and "Titan 100" in why
    with pytest.raises(PciIdError, match="assumes a 1843200 Hz input clock"):
        choose_identity(node, driver, "115d:0101")


# ------------------------------------------------------------------ registers past BAR0's start

SPI_BOARD = board_dts_path("sim-pci-spi.dts")
SPI = "/soc@9000000/spi@60000"


def test_thunderx_spi_entry_puts_the_mpi_block_at_bar0_plus_4k():
    from platpass.assembly import find_export
    from platpass.assembly.backends import sim_opener
    from platpass.assembly.serving import open_device
    from platpass.vfio_device.pci.device import as_pci_function

    export = find_export(devicetree.load_dts(SPI_BOARD), SPI)
    assert not isinstance(export, str), export
    reactor = EpollReactor()
    inner = open_device(export, sim_opener(ManualClock), reactor)
    device, why = as_pci_function(inner, "auto")
    assert (device.identity.vendor, device.identity.device) == (0x177D, 0xA00B)
    assert "spi-thunderx" in why
    device.open()
    try:
        bar0 = device.region_info(0)
        assert bar0.size == 0x2000                  # 0x1000 + the 0x100 block, rounded
        assert not bar0.flags & RegionFlags.MMAP and not bar0.sparse_areas
        device.config.write(Reg.COMMAND, 2, Command.MEMORY)
        model = device.backend.model
        device.write(0, 0x1000, 8, 0x1001)           # MPI_CFG: enable, csena0
        assert model.cfg == 0x1001
        assert device.read(0, 0x1000, 8) == 0x1001
        device.write(0, 0x0000, 8, 0xFFFF)            # before the block: ignored, reads 0
        device.write(0, 0x0FF8, 8, 0xFFFF)
        assert device.read(0, 0x0000, 8) == 0 and device.read(0, 0x0FF8, 4) == 0
        assert model.cfg == 0x1001
        assert device.read(0, 0x1F00, 8) == 0         # past it: padding
        # RDSR through the BAR, as spi-thunderx sends it: 0x05 then one byte clocked in
        device.write(0, 0x1080, 8, 0x05)
        device.write(0, 0x1010, 8, 1 | 1 << 8 | 1 << 16)
        device.write(0, 0x1010, 8, 1)
        assert device.read(0, 0x1008, 8) == 1 << 8   # not busy, one byte received
        assert device.read(0, 0x1080, 8) == 0         # status of an idle EEPROM
    finally:
        device.close()
        reactor.close()


def test_bar0_offset_must_be_page_aligned(reactor):
    from platpass.vfio_device.pci.ids import bar0_offset

    assessment, driver = _assessed(PCI_BOARD, UART)
    backend = open_sim_backend(assessment.node, reactor, ManualClock())
    inner = VfioDevice(assessment.node, driver, backend, reactor)
    with pytest.raises(PciPersonalityError, match="not a multiple of 4 KiB"):
        PciVfioDevice(inner, IDENT, bar0_offset=0x800)
    assert bar0_offset(IDENT) == 0
    inner.close()
