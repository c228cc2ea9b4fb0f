"""NXP Layerscape/QorIQ peripherals: GPIO, LPUART and DSPI.

Layerscape I2C is the Vybrid I2C (:class:`platpass.drivers.imx.VybridI2c`) and its watchdog
the i.MX WDOG (:class:`platpass.drivers.imx.ImxWdt`). LPUART and DSPI raise slave requests
to the eDMA engine, which stays with the host; their request enables are masked.

Several of these blocks exist in big-endian instances (LS1021A-type LPUARTs, DSPIs marked
``big-endian``). Register values here are written as the IP documents them; for a
big-endian instance the driver byte-swaps its masks and reset values, because platpass
moves register bytes as they sit in memory (a little-endian view).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from platpass.drivers.common import (
    MaskedRegisterDriver,
    PlatformDriver,
    RegisterAccess,
    RegisterWrite,
    Trap,
)
from platpass.firmware.model import DeviceNode


def byte_swapped(value: int, size: int) -> int:
    """``value`` as a ``size``-byte register of the other endianness."""
    return int.from_bytes(value.to_bytes(size, "little"), "big")


class _EndianAwareDriver(MaskedRegisterDriver):
    """A masked driver whose registers may be big-endian (decided per node).

    Declarations (``masked_bits``, ``reset_sequence``) are written in the IP's own bit
    numbering; for a big-endian instance they are byte-swapped into the little-endian view
    that register accesses use.
    """

    #: Every instance of the claimed compatibles is big-endian.
    always_big_endian: ClassVar[bool] = False

    def __init__(self, node: DeviceNode) -> None:
        super().__init__(node)
        self.big_endian = self.always_big_endian or "big-endian" in node.properties
        sizes = {t.name: t.size for t in self.traps + self.dma_traps}
        self._masks: dict[str, int] = {
            name: byte_swapped(bits, sizes[name]) if self.big_endian else bits
            for name, bits in self.masked_bits.items()
        }

    def masks(self) -> Mapping[str, int]:
        """The declared masks, byte-swapped for a big-endian instance."""
        return self._masks

    def reset(self, regs: RegisterAccess) -> None:
        """The declared reset values (byte-swapped for a big-endian instance), then the
        masked bits cleared."""
        for step in self.reset_sequence:
            value = byte_swapped(step.value, step.size) if self.big_endian else step.value
            regs.write(step.region, step.offset, step.size, value)
        self.clear_masked_bits(regs)


# Evidence: drivers/gpio/gpio-mpc8xxx.c: GPDIR/GPODR/GPDAT/GPIER/GPIMR/GPICR registers;
# binding Documentation/devicetree/bindings/gpio/fsl,qoriq-gpio.yaml.
class QoriqGpio(PlatformDriver):
    """QorIQ/Layerscape GPIO controller.

    The reset values are endian-neutral (all-zeros and all-ones), so both big- and
    little-endian instances are covered.
    """

    name = "fsl-qoriq-gpio"
    compatibles = ("fsl,qoriq-gpio",)
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-mpc8xxx.c: direction, data and interrupt registers only; "
        "binding Documentation/devicetree/bindings/gpio/fsl,qoriq-gpio.yaml"
    )
    # GPIMR (0x10) = 0: all interrupts masked; GPIER (0x0c) all-ones: clear pending events.
    reset_sequence = (
        RegisterWrite(0, 0x10, 4, 0),
        RegisterWrite(0, 0x0C, 4, 0xFFFFFFFF),
    )


#: LPUART32 BAUD bits that raise eDMA requests: TDMAE (23), RDMAE (21), RIDMAE (20).
LPUART_BAUD_DMA_BITS = (1 << 23) | (1 << 21) | (1 << 20)


# Evidence: drivers/tty/serial/fsl_lpuart.c: 32-bit register FIFO UART; DMA requests to the
# eDMA engine (``dmas``) are enabled by UARTBAUD TDMAE/RDMAE. Binding
# Documentation/devicetree/bindings/serial/fsl-lpuart.yaml.
class _Lpuart32(_EndianAwareDriver):
    """Layerscape LPUART, 32-bit registers from offset 0 (BAUD, STAT, CTRL, DATA...)."""

    family = "uart"
    dma_traps = (
        Trap(0, 0x00, 4, "UARTBAUD", "TDMAE/RDMAE/RIDMAE masked: no eDMA requests"),
    )
    masked_bits = {"UARTBAUD": LPUART_BAUD_DMA_BITS}
    # UARTCTRL (0x08) = 0: transmitter, receiver and every interrupt enable off.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


class Ls1028aLpuart(_Lpuart32):
    """LS1028A LPUART (32-bit, little-endian)."""

    name = "fsl-ls1028a-lpuart"
    compatibles = ("fsl,ls1028a-lpuart",)
    evidence = (
        "Linux drivers/tty/serial/fsl_lpuart.c (ls1028a_data: 32-bit little-endian): data "
        "FIFO UART, eDMA slave requests gated by UARTBAUD TDMAE/RDMAE; binding "
        "Documentation/devicetree/bindings/serial/fsl-lpuart.yaml"
    )


class Ls1021aLpuart(_Lpuart32):
    """LS1021A-type LPUART (LS1043A, LS1046A...): the same registers, big-endian."""

    name = "fsl-ls1021a-lpuart"
    compatibles = ("fsl,ls1021a-lpuart",)
    always_big_endian = True
    evidence = (
        "Linux drivers/tty/serial/fsl_lpuart.c (ls1021a_data: 32-bit big-endian): data "
        "FIFO UART, eDMA slave requests gated by UARTBAUD TDMAE/RDMAE; binding "
        "Documentation/devicetree/bindings/serial/fsl-lpuart.yaml"
    )


#: DSPI RSER bits that route FIFO requests to DMA instead of interrupts: TFFF_DIRS (24),
#: RFDF_DIRS (16).
DSPI_RSER_DMA_BITS = (1 << 24) | (1 << 16)


# Evidence: drivers/spi/spi-fsl-dspi.c: PUSHR/POPR FIFO registers; in DMA mode the eDMA engine
# (``dmas``) serves requests selected by RSER TFFF_DIRS/RFDF_DIRS. Binding
# Documentation/devicetree/bindings/spi/fsl,dspi.yaml (``big-endian`` property).
class LayerscapeDspi(_EndianAwareDriver):
    """Layerscape DSPI; big-endian when its node says ``big-endian`` (LS1043A, LS1012A)."""

    name = "fsl-layerscape-dspi"
    compatibles = ("fsl,ls1021a-v1.0-dspi", "fsl,ls1028a-dspi", "fsl,ls2085a-dspi")
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-fsl-dspi.c: PUSHR/POPR FIFO registers, eDMA slave requests "
        "selected by RSER TFFF_DIRS/RFDF_DIRS; binding "
        "Documentation/devicetree/bindings/spi/fsl,dspi.yaml"
    )
    dma_traps = (Trap(0, 0x30, 4, "RSER", "TFFF_DIRS/RFDF_DIRS masked: no eDMA requests"),)
    masked_bits = {"RSER": DSPI_RSER_DMA_BITS}
    # RSER (0x30) = 0: no interrupt or DMA requests; MCR (0x00) = 0x4001: MDIS + HALT
    # (the reference manual's reset value).
    reset_sequence = (
        RegisterWrite(0, 0x30, 4, 0),
        RegisterWrite(0, 0x00, 4, 0x00004001),
    )


DRIVERS = (QoriqGpio, Ls1028aLpuart, Ls1021aLpuart, LayerscapeDspi)
