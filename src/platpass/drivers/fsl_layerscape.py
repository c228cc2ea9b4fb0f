"""NXP Layerscape/QorIQ peripherals: GPIO, LPUART and DSPI.

Layerscape I2C is the Vybrid I2C (:class:`platpass.drivers.imx.VybridI2c`) and its watchdog
the i.MX WDOG (:class:`platpass.drivers.imx.ImxWdt`). LPUART and DSPI raise slave requests
to the eDMA engine, which stays with the host; their request enables are masked.

Several of these blocks exist in big-endian instances (LS1021A, LS1043A...). Only compatibles
whose instances are little-endian are claimed here, because the masks below are written
for little-endian registers.
"""

from __future__ import annotations

from platpass.drivers.common import (
    MaskedRegisterDriver,
    PlatformDriver,
    RegisterWrite,
    Trap,
)


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
class Ls1028aLpuart(MaskedRegisterDriver):
    """LS1028A LPUART (32-bit, little-endian, no register offset)."""

    name = "fsl-ls1028a-lpuart"
    compatibles = ("fsl,ls1028a-lpuart",)
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/fsl_lpuart.c (ls1028a_data: 32-bit little-endian): data "
        "FIFO UART, eDMA slave requests gated by UARTBAUD TDMAE/RDMAE; binding "
        "Documentation/devicetree/bindings/serial/fsl-lpuart.yaml"
    )
    dma_traps = (
        Trap(0, 0x00, 4, "UARTBAUD", "TDMAE/RDMAE/RIDMAE masked: no eDMA requests"),
    )
    masked_bits = {"UARTBAUD": LPUART_BAUD_DMA_BITS}
    # UARTCTRL (0x08) = 0: transmitter, receiver and every interrupt enable off.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


#: DSPI RSER bits that route FIFO requests to DMA instead of interrupts: TFFF_DIRS (24),
#: RFDF_DIRS (16).
DSPI_RSER_DMA_BITS = (1 << 24) | (1 << 16)


# Evidence: drivers/spi/spi-fsl-dspi.c: PUSHR/POPR FIFO registers; in DMA mode the eDMA engine
# (``dmas``) serves requests selected by RSER TFFF_DIRS/RFDF_DIRS. Binding
# Documentation/devicetree/bindings/spi/fsl,dspi.yaml.
class Ls1028aDspi(MaskedRegisterDriver):
    """LS1028A DSPI (little-endian instance, per its ``little-endian`` property)."""

    name = "fsl-ls1028a-dspi"
    compatibles = ("fsl,ls1028a-dspi",)
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


DRIVERS = (QoriqGpio, Ls1028aLpuart, Ls1028aDspi)
