"""What trapped registers do: DMA-enable bits masked, host-owned registers write-protected.

The register file here is a bytearray standing in for the hardware (a test double of the
device, not of platpass): reads and writes of 1/2/4/8 bytes, little-endian, per region.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.drivers.allwinner import Sun6iRtc
from platpass.drivers.common import Trap, access_mask, register_io_width
from platpass.drivers.fsl_layerscape import LayerscapeDspi, Ls1021aLpuart, Ls1028aLpuart
from platpass.drivers.imx import IMX_UCR1_DMA_BITS, ImxUart, VybridI2c
from platpass.drivers.nvidia import TegraGpio, TegraUart
from platpass.drivers.qcom import QupI2c
from platpass.drivers.snps_dw import DwApbUart
from platpass.drivers.ti import OmapMcspi, OmapUart
from platpass.firmware.devicetree import load_dtb
from platpass.firmware.model import DeviceNode


class Registers:
    """Little-endian register file over bytearrays; records every write."""

    def __init__(self, *sizes: int) -> None:
        self.mem = [bytearray(size) for size in sizes]
        self.writes: list[tuple[int, int, int, int]] = []

    def read(self, region: int, offset: int, size: int) -> int:
        return int.from_bytes(self.mem[region][offset:offset + size], "little")

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.writes.append((region, offset, size, value))
        self.mem[region][offset:offset + size] = value.to_bytes(size, "little")


def _node(compatible: str, *, dmas: bool, big_endian: bool = False) -> DeviceNode:
    props = {"compatible": compatible.encode() + b"\0"}
    if dmas:
        props["dmas"] = b"\0\0\0\x01\0\0\0\x16"
    if big_endian:
        props["big-endian"] = b""
    return DeviceNode(path="/soc/test@0", compatible=(compatible,), status="okay",
                      is_mmio=True, properties=props)


@pytest.fixture(scope="module")
def imx8mm_uart_with_dmas(shared_dtbs) -> DeviceNode:
    """The enabled i.MX8MM UART of the Venice GW7903, whose node names SDMA channels."""
    tree = load_dtb(next(p for p in shared_dtbs if p.name == "freescale__imx8mm-venice-gw7903.dtb"))
    node = tree.node("/soc@0/bus@30800000/spba-bus@30800000/serial@30860000")
    assert "dmas" in node.properties and node.enabled
    return node


def _trap(driver: object, name: str) -> Trap:
    return next(t for t in driver.active_traps() if t.name == name)


def test_imx_uart_dma_traps_apply_only_with_dmas(imx8mm_uart_with_dmas: DeviceNode) -> None:
    with_dmas = ImxUart(imx8mm_uart_with_dmas)
    assert [t.name for t in with_dmas.active_traps()] == ["UCR1", "UCR4"]
    assert ImxUart(_node("fsl,imx6q-uart", dmas=False)).active_traps() == ()


def test_imx_uart_ucr1_write_keeps_control_bits_and_drops_dma_bits(
        imx8mm_uart_with_dmas: DeviceNode) -> None:
    driver = ImxUart(imx8mm_uart_with_dmas)
    regs = Registers(0x10000)
    ucr1 = _trap(driver, "UCR1")
    # UARTEN | ATDMAEN | TDMAEN | RDMAEN | RRDYEN | TRDYEN
    wanted = 0x0001 | 0x0004 | 0x0008 | 0x0100 | 0x0200 | 0x2000
    driver.trap_write(regs, ucr1, 0, 0x80, 4, wanted)
    assert regs.read(0, 0x80, 4) == 0x2201
    # A byte write to UCR1[15:8] setting RDMAEN and RRDYEN keeps only RRDYEN.
    driver.trap_write(regs, ucr1, 0, 0x81, 1, 0x03)
    assert regs.mem[0][0x81] == 0x02
    # DMA bits the hardware holds (left by the host) read back as zero.
    regs.write(0, 0x80, 4, 0x0001 | IMX_UCR1_DMA_BITS)
    assert driver.trap_read(regs, ucr1, 0, 0x80, 4) == 0x0001
    ucr4 = _trap(driver, "UCR4")
    driver.trap_write(regs, ucr4, 0, 0x8C, 4, 0x8000 | 0x40 | 0x01)
    assert regs.read(0, 0x8C, 4) == 0x8001


def test_imx_uart_reset_leaves_no_dma_request_enabled(
        imx8mm_uart_with_dmas: DeviceNode) -> None:
    driver = ImxUart(imx8mm_uart_with_dmas)
    regs = Registers(0x10000)
    regs.write(0, 0x80, 4, 0xFFFF)
    regs.write(0, 0x8C, 4, 0xFFFF)
    driver.reset(regs)
    assert regs.read(0, 0x80, 4) & IMX_UCR1_DMA_BITS == 0
    assert regs.read(0, 0x80, 4) == 0
    assert regs.read(0, 0x84, 4) == 0x0001
    assert regs.read(0, 0x8C, 4) == 0x8000


def test_masked_reset_clears_dma_bits_the_sequence_does_not_touch() -> None:
    driver = Ls1028aLpuart(_node("fsl,ls1028a-lpuart", dmas=True))
    regs = Registers(0x1000)
    regs.write(0, 0x00, 4, 0x0F000004 | (1 << 23) | (1 << 21))  # baud + TDMAE + RDMAE
    regs.write(0, 0x08, 4, 0x00EC0000)  # TE, RE, TIE, RIE...
    driver.reset(regs)
    assert regs.read(0, 0x00, 4) == 0x0F000004  # divisor kept, DMA enables gone
    assert regs.read(0, 0x08, 4) == 0


def test_big_endian_dspi_masks_the_bits_where_the_bytes_really_are() -> None:
    """RSER of a ``big-endian`` DSPI: bit 24 (TFFF_DIRS) lives in the byte at 0x30."""
    driver = LayerscapeDspi(_node("fsl,ls1021a-v1.0-dspi", dmas=True, big_endian=True))
    regs = Registers(0x10000)
    rser = _trap(driver, "RSER")
    guest_bytes = (0x0303_0000).to_bytes(4, "big")  # TFFF_RE|TFFF_DIRS|RFDF_RE|RFDF_DIRS
    driver.trap_write(regs, rser, 0, 0x30, 4, int.from_bytes(guest_bytes, "little"))
    assert bytes(regs.mem[0][0x30:0x34]) == (0x0202_0000).to_bytes(4, "big")
    driver.reset(regs)
    assert bytes(regs.mem[0][0x00:0x04]) == (0x0000_4001).to_bytes(4, "big")  # MDIS | HALT
    assert bytes(regs.mem[0][0x30:0x34]) == bytes(4)


def test_little_endian_dspi_and_big_endian_lpuart() -> None:
    little = LayerscapeDspi(_node("fsl,ls1028a-dspi", dmas=True))
    assert little.masks()["RSER"] == (1 << 24) | (1 << 16)
    lpuart = Ls1021aLpuart(_node("fsl,ls1021a-lpuart", dmas=True))  # big-endian by design
    regs = Registers(0x1000)
    baud = _trap(lpuart, "UARTBAUD")
    value = (0x0F00_0004 | (1 << 23) | (1 << 21)).to_bytes(4, "big")
    lpuart.trap_write(regs, baud, 0, 0x00, 4, int.from_bytes(value, "little"))
    assert bytes(regs.mem[0][0:4]) == (0x0F00_0004).to_bytes(4, "big")


def test_vybrid_i2c_byte_register_mask() -> None:
    driver = VybridI2c(_node("fsl,vf610-i2c", dmas=True))
    regs = Registers(0x10000)
    ibcr = _trap(driver, "IBCR")
    assert (ibcr.offset, ibcr.size) == (0x02, 1)
    driver.trap_write(regs, ibcr, 0, 0x02, 1, 0xC2)  # IBIE | MSTA-ish | DMAEN
    assert regs.mem[0][0x02] == 0xC0
    # A 4-byte access at 0x00 covering IBAD/IBFD/IBCR/IBSR masks only IBCR's DMAEN.
    driver.trap_write(regs, ibcr, 0, 0x00, 4, 0x12_02_34_56)
    assert regs.read(0, 0x00, 4) == 0x12_00_34_56


def test_omap_uart_fcr_dma_mode_masked_but_efr_untouched() -> None:
    driver = OmapUart(_node("ti,am654-uart", dmas=True))
    regs = Registers(0x100)
    fcr = _trap(driver, "FCR")
    regs.write(0, 0x0C, 4, 0x03)  # operational mode: offset 0x08 is FCR
    driver.trap_write(regs, fcr, 0, 0x08, 4, 0x0F)
    assert regs.read(0, 0x08, 4) == 0x07
    regs.write(0, 0x0C, 4, 0xBF)  # configuration mode B: offset 0x08 is EFR
    driver.trap_write(regs, fcr, 0, 0x08, 4, 0x1F)
    assert regs.read(0, 0x08, 4) == 0x1F
    scr = _trap(driver, "SCR")
    driver.trap_write(regs, scr, 0, 0x40, 4, 0xC7)
    assert regs.read(0, 0x40, 4) == 0xC0


@pytest.mark.parametrize(("mode", "allowed"), [(0, 0), (1, 1), (2, 0), (3, 1)])
def test_qup_io_mode_never_reaches_a_dma_mode(mode: int, allowed: int) -> None:
    """QUP modes: 0 FIFO, 1 BLOCK (CPU served), 2 DMOV, 3 BAM (DMA): DMA turns into CPU."""
    driver = QupI2c(_node("qcom,i2c-qup-v2.2.1", dmas=True))
    regs = Registers(0x600)
    io_mode = _trap(driver, "QUP_IO_MODE")
    packing = (1 << 14) | (1 << 15)
    driver.trap_write(regs, io_mode, 0, 0x008, 4, (mode << 10) | (mode << 12) | packing)
    assert regs.read(0, 0x008, 4) == (allowed << 10) | (allowed << 12) | packing


def test_mcspi_channel_dma_requests_masked_on_every_channel() -> None:
    driver = OmapMcspi(_node("ti,omap4-mcspi", dmas=True))
    regs = Registers(0x400)
    confs = [t for t in driver.active_traps() if t.name.endswith("CONF")]
    assert [t.offset for t in confs] == [0x12C, 0x140, 0x154, 0x168]
    for trap in confs:
        driver.trap_write(regs, trap, 0, trap.offset, 4, 0x0001_C3FF)  # DMAR|DMAW|DPE0|...
        assert regs.read(0, trap.offset, 4) == 0x0001_03FF


def test_tegra_uart_fcr_write_loses_dma_mode_while_iir_reads_stay_whole() -> None:
    driver = TegraUart(_node("nvidia,tegra20-uart", dmas=True))
    regs = Registers(0x40)
    fcr = _trap(driver, "FCR")
    driver.trap_write(regs, fcr, 0, 0x08, 1, 0xCF)  # trigger level, DMA mode, FIFO reset+on
    assert regs.mem[0][0x08] == 0xC7
    regs.write(0, 0x08, 4, 0xCC)  # the hardware's IIR: FIFOs on, character timeout (0xC)
    assert driver.trap_read(regs, fcr, 0, 0x08, 4) == 0xCC
    # The masked reset never reads 0x08 back (it is IIR, not FCR); FCR comes from the sequence.
    driver.reset(regs)
    assert regs.read(0, 0x08, 4) == 0x07
    assert (0, 0x08, 4, 0xCC & ~0x08) not in regs.writes


def test_tegra_gpio_pin_function_select_is_write_protected() -> None:
    driver = TegraGpio(_node("nvidia,tegra30-gpio", dmas=False))
    regs = Registers(0x1000)
    regs.write(0, 0x304, 4, 0x0000_00F0)  # bank 3, port 1: four lines are GPIOs (host's choice)
    cnf = next(t for t in driver.traps if t.name == "CNF3")
    assert driver.trap_read(regs, cnf, 0, 0x304, 4) == 0xF0
    driver.trap_write(regs, cnf, 0, 0x304, 4, 0xFF)  # guest tries to take four more pins
    msk = next(t for t in driver.traps if t.name == "MSK_CNF3")
    driver.trap_write(regs, msk, 0, 0x384, 4, 0xFF0F)  # ...or through the masked twin
    assert regs.read(0, 0x304, 4) == 0xF0
    assert regs.read(0, 0x384, 4) == 0
    # Everything else in the bank (OE, OUT, INT_ENB...) is the guest's and stays mappable.
    assert not any(t.covers(0, 0x310, 4) or t.covers(0, 0x350, 4) for t in driver.traps)


def test_sun6i_rtc_oscillator_register_is_write_protected() -> None:
    driver = Sun6iRtc(_node("allwinner,sun8i-h3-rtc", dmas=False))
    regs = Registers(0x400)
    regs.write(0, 0x00, 4, 0x4011)  # host: external 32k crystal selected
    losc = _trap(driver, "LOSC_CTRL")
    assert driver.trap_read(regs, losc, 0, 0x00, 4) == 0x4011
    driver.trap_write(regs, losc, 0, 0x00, 4, 0x16AA0000)  # guest tries the internal RC
    assert regs.read(0, 0x00, 4) == 0x4011


def test_default_trap_reads_zero_and_ignores_writes() -> None:
    from platpass.drivers.renesas import RcarI2c

    driver = RcarI2c(_node("renesas,rcar-gen3-i2c", dmas=True))
    regs = Registers(0x40)
    regs.write(0, 0x3C, 4, 0x5)
    icdmaer = _trap(driver, "ICDMAER")
    assert driver.trap_read(regs, icdmaer, 0, 0x3C, 4) == 0
    before = list(regs.writes)
    driver.trap_write(regs, icdmaer, 0, 0x3C, 4, 0xF)
    assert regs.writes == before


@pytest.mark.parametrize(("raw", "width"), [
    (None, 4), ((1).to_bytes(4, "big"), 1), ((4).to_bytes(4, "big"), 4),
    ((3).to_bytes(4, "big"), 4), (b"\x01", 4),
])
def test_dw_uart_reset_honours_reg_io_width(raw: bytes | None, width: int) -> None:
    """Armada 7k/8k DW UARTs say ``reg-io-width = <1>``: byte writes, 4 bytes apart."""
    node = _node("snps,dw-apb-uart", dmas=False)
    if raw is not None:
        node.properties["reg-io-width"] = raw
    assert register_io_width(node, 4) == width
    regs = Registers(0x100)
    DwApbUart(node).reset(regs)
    assert regs.writes == [(0, 0x0C, width, 0x03), (0, 0x04, width, 0), (0, 0x10, width, 0)]


@settings(max_examples=200, deadline=None)
@given(trap_offset=st.integers(0, 32), trap_size=st.sampled_from([1, 2, 4, 8]),
       offset=st.integers(0, 48), size=st.sampled_from([1, 2, 4, 8]),
       bits=st.integers(0, (1 << 64) - 1))
def test_access_mask_touches_only_overlapping_bytes(trap_offset: int, trap_size: int,
                                                    offset: int, size: int, bits: int) -> None:
    bits &= (1 << (8 * trap_size)) - 1
    trap = Trap(0, trap_offset, trap_size, "R", "test")
    mask = access_mask(trap, offset, size, bits)
    assert 0 <= mask < 1 << (8 * size)
    for index in range(size):
        byte = (mask >> (8 * index)) & 0xFF
        address = offset + index
        if trap_offset <= address < trap_offset + trap_size:
            assert byte == (bits >> (8 * (address - trap_offset))) & 0xFF
        else:
            assert byte == 0
