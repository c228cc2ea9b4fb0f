"""Cavium MPI SPI model with an AT25 EEPROM, driven the way Linux's spi-cavium.c drives it
(nine-byte chunks, ``leavecs`` between the chunks of one message, polled ``busy``) and the
way at25.c talks to the EEPROM (WREN, WRITE within a page, RDSR until ready, READ)."""

from __future__ import annotations

import logging

import pytest
from sim_helpers import Regs

from platpass.assembly import find_export
from platpass.assembly.backends import sim_opener
from platpass.assembly.serving import open_device
from platpass.errors import HostError
from platpass.firmware import devicetree
from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.board import board_dts_path, open_sim_backend, populate_bus
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models.octeon_spi import (
    DATA_BYTES,
    TX_CSID_SHIFT,
    TX_LEAVECS,
    TX_TXNUM_SHIFT,
    Command,
    OcteonSpi,
    Reg,
    SpiEeprom,
)
from platpass.reactor import EpollReactor

BOARD = board_dts_path("sim-pci-spi.dts")
SPI = "/soc@9000000/spi@60000"


class Master:
    """What spi-cavium.c's octeon_spi_do_transfer does with the registers."""

    def __init__(self, regs: Regs, cs: int = 0) -> None:
        self.regs, self.cs = regs, cs
        regs[Reg.CFG] = 1 | 1 << (12 + cs) | 10 << 16   # enable, csena<cs>, clkdiv

    def transfer(self, tx: bytes | None, length: int, *, last_leavecs: bool) -> bytes:
        out = b""
        pos = 0
        while True:
            chunk = min(length - pos, DATA_BYTES)
            final = pos + chunk >= length
            for i in range(chunk):
                self.regs[Reg.DAT0 + 8 * i] = tx[pos + i] if tx else 0
            leave = last_leavecs if final else True
            self.regs[Reg.TX] = (chunk | (chunk if tx else 0) << TX_TXNUM_SHIFT
                                 | (TX_LEAVECS if leave else 0) | self.cs << TX_CSID_SHIFT)
            assert self.regs[Reg.STS] & 1 == 0            # octeon_spi_wait_ready
            assert self.regs[Reg.STS] >> 8 == chunk
            out += bytes(self.regs[Reg.DAT0 + 8 * i] & 0xFF for i in range(chunk))
            pos += chunk
            if final:
                return out

    def message(self, *transfers: tuple[bytes | None, int]) -> list[bytes]:
        """One spi_message: chip select held across its transfers, released after."""
        return [self.transfer(tx, n, last_leavecs=i < len(transfers) - 1)
                for i, (tx, n) in enumerate(transfers)]


@pytest.fixture
def bus():
    clock = ManualClock()
    eeprom = SpiEeprom(clock, 1024, 32, 2)
    model = OcteonSpi(clock, {0: eeprom})
    backend = SimulatedBackend(model, 0x100)
    yield clock, eeprom, model, Master(Regs(backend, width=8))
    backend.close()


def read(master: Master, address: int, length: int) -> bytes:
    return master.message((bytes([Command.READ, address >> 8, address & 0xFF]), 3),
                          (None, length))[1]


def status(master: Master) -> int:
    return master.message((bytes([Command.RDSR]), 1), (None, 1))[1][0]


def write(master: Master, address: int, data: bytes) -> None:
    master.message((bytes([Command.WREN]), 1))
    master.message((bytes([Command.WRITE, address >> 8, address & 0xFF]) + data,
                    3 + len(data)))


def test_read_spans_nine_byte_chunks(bus):
    _, eeprom, model, master = bus
    eeprom.data[:] = bytes(i & 0xFF for i in range(1024))
    assert read(master, 0x3F0, 40) == bytes(i & 0xFF for i in range(0x3F0, 0x418)) \
        [:16] + bytes(range(24))                        # wraps at the end of the array
    assert model.transfers == 1 + 5                      # 3 command bytes, then 40 in 9s


def test_write_needs_wren_wraps_in_its_page_and_is_busy_for_the_write_cycle(bus):
    clock, eeprom, _, master = bus
    master.message((bytes([Command.WRITE, 0, 0]) + b"nope", 7))   # no WREN: ignored
    assert eeprom.data[:4] == b"\xff" * 4 and eeprom.writes == 0
    write(master, 0x1C, b"ABCDEFGH")                     # page 0x00-0x1f: wraps to 0x00
    assert bytes(eeprom.data[0x1C:0x20]) == b"ABCD" and bytes(eeprom.data[0:4]) == b"EFGH"
    assert eeprom.writes == 1
    assert status(master) & 0x01                          # busy (WIP) during the cycle...
    assert read(master, 0x1C, 4) == b"\xff" * 4          # ...and deaf to READ
    clock.advance(0.006)
    assert status(master) == 0                            # ready, write latch cleared
    assert read(master, 0x1C, 4) == b"ABCD"
    master.message((bytes([Command.WRITE, 0, 0x40]) + b"x", 4))   # latch was cleared
    assert eeprom.data[0x40] == 0xFF


def test_wrdi_clears_the_latch_and_a_write_ends_only_at_chip_select_release(bus):
    _, eeprom, _, master = bus
    master.message((bytes([Command.WREN]), 1))
    assert status(master) == 0x02
    master.message((bytes([Command.WRDI]), 1))
    assert status(master) == 0
    master.message((bytes([Command.WREN]), 1))
    # chip select held: nothing committed until the last transfer releases it
    master.transfer(bytes([Command.WRITE, 0, 5, 0x42]), 4, last_leavecs=True)
    assert eeprom.data[5] == 0xFF
    master.transfer(None, 0, last_leavecs=False)
    assert eeprom.data[5] == 0x42


def test_eight_bit_address_part_takes_a8_in_the_opcode() -> None:
    clock = ManualClock()
    eeprom = SpiEeprom(clock, 512, 16, 1)
    model = OcteonSpi(clock, {1: eeprom})
    backend = SimulatedBackend(model, 0x100)
    master = Master(Regs(backend, width=8), cs=1)
    master.message((bytes([Command.WREN]), 1))
    master.message((bytes([Command.WRITE | 0x08, 0x10, 0x5A]), 3))
    assert eeprom.data[0x110] == 0x5A and eeprom.data[0x10] == 0xFF
    clock.advance(0.01)
    assert master.message((bytes([Command.READ | 0x08, 0x10]), 2), (None, 1))[1] == b"\x5a"
    backend.close()


def test_empty_chip_select_reads_ones_and_reset_releases_chip_select(bus):
    _, eeprom, _, master = bus
    other = Master(master.regs, cs=2)
    assert other.message((b"\x03\x00\x00", 3), (None, 2))[1] == b"\xff\xff"
    master.message((bytes([Command.WREN]), 1))
    master.transfer(bytes([Command.WRITE, 0, 9, 0x42]), 4, last_leavecs=True)  # CS held
    assert eeprom.data[9] == 0xFF
    master.regs[Reg.CFG] = 0                      # the driver's reset: CS released...
    assert eeprom.data[9] == 0x42 and eeprom.writes == 1   # ...which ends the write


@pytest.mark.parametrize("args", [(1000, 32, 2), (1024, 32, 4), (1024, 0, 2), (1024, 32, 1)])
def test_impossible_eeproms_are_refused(args) -> None:
    with pytest.raises(ValueError):
        SpiEeprom(ManualClock(), *args)


# ------------------------------------------------------------------ the board's wiring

def _tree(source_edit=lambda s: s):
    return devicetree.load_dts_source(source_edit(BOARD.read_text()))


def test_board_puts_the_dt_eeprom_on_its_chip_select() -> None:
    tree = _tree()
    found = find_export(tree, SPI)
    assert not isinstance(found, str), found
    assert [raw.name for raw in found.subtree] == ["eeprom@0"]
    reactor = EpollReactor()
    device = open_device(found, sim_opener(ManualClock), reactor)
    eeprom = device.backend.model.targets[0]
    assert isinstance(eeprom, SpiEeprom)
    assert (eeprom.size, eeprom.page_size, eeprom.address_bytes) == (1024, 32, 2)
    device.close()
    reactor.close()


def test_disabled_and_unmodelled_children_are_left_off_the_bus(caplog) -> None:
    tree = _tree(lambda s: s.replace('reg = <0>;\n\t\t\t\tspi-max',
                                     'reg = <0>;\n\t\t\t\tstatus = "disabled";\n\t\t\t\tspi-max')
                 .replace("\t\t\teeprom@0 {", '\t\t\tflash@1 {\n\t\t\t\tcompatible = '
                          '"jedec,spi-nor";\n\t\t\t\treg = <1>;\n\t\t\t};\n\n'
                          "\t\t\teeprom@0 {"))
    node = tree.node(SPI)
    backend = open_sim_backend(node, EpollReactor(), ManualClock())
    subtree = tuple(tree.raw.descendants(SPI))
    with caplog.at_level(logging.WARNING):
        populate_bus(backend, subtree)
    assert backend.model.targets == {}
    assert "flash@1: no simulated model" in caplog.text
    backend.close()


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.replace("address-width = <16>;", ""), "needs size, pagesize and address"),
    (lambda s: s.replace("size = <1024>;", "size = <1000>;"), "1000 bytes cannot have"),
    (lambda s: s.replace("reg = <0>;\n\t\t\t\tspi-max", "reg = <7>;\n\t\t\t\tspi-max"),
     "one chip select 0-3"),
])
def test_malformed_eeprom_node_is_a_one_line_error(edit, message) -> None:
    tree = _tree(edit)
    backend = open_sim_backend(tree.node(SPI), EpollReactor(), ManualClock())
    subtree = tuple(tree.raw.descendants(SPI))
    with pytest.raises(HostError, match=message):
        populate_bus(backend, subtree)
    backend.close()
