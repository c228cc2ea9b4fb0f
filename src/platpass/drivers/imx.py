"""NXP i.MX peripherals: GPIO, UART, I2C (i.MX and Vybrid/Layerscape layouts), WDOG, PWM.

The i.MX UART and I2C can raise slave-DMA requests to the SDMA/eDMA engines, which stay with
the host. Their DMA-enable bits share registers with bits the guest needs, so those registers
are trapped and passed through with the DMA bits forced to zero
(:class:`~platpass.drivers.common.MaskedRegisterDriver`).
"""

from __future__ import annotations

from platpass.drivers.common import (
    MaskedRegisterDriver,
    PlatformDriver,
    RegisterWrite,
    Trap,
)


# Evidence: drivers/gpio/gpio-mxc.c: DR/GDIR/PSR/ICR/IMR/ISR/EDGE_SEL registers; binding
# Documentation/devicetree/bindings/gpio/fsl-imx-gpio.yaml.
class ImxGpio(PlatformDriver):
    """i.MX31-and-later GPIO port (the i.MX1/i.MX21 layout differs and is not claimed)."""

    name = "fsl-imx-gpio"
    compatibles = ("fsl,imx31-gpio", "fsl,imx35-gpio", "fsl,imx7d-gpio")
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-mxc.c (imx31/imx35 register layout: data, direction and "
        "interrupt registers only); binding "
        "Documentation/devicetree/bindings/gpio/fsl-imx-gpio.yaml"
    )
    # IMR (0x14) = 0: every line's interrupt masked; ISR (0x18) write-1-to-clear all.
    reset_sequence = (
        RegisterWrite(0, 0x14, 4, 0),
        RegisterWrite(0, 0x18, 4, 0xFFFFFFFF),
    )


#: i.MX UART UCR1 bits that raise DMA requests: RXDMAEN (8), TXDMAEN (3), ATDMAEN (2).
IMX_UCR1_DMA_BITS = (1 << 8) | (1 << 3) | (1 << 2)
#: i.MX UART UCR4 IDDMAEN (6): DMA idle-condition detection.
IMX_UCR4_DMA_BITS = 1 << 6


# Evidence: drivers/tty/serial/imx.c: the UART raises SDMA requests when UCR1 RXDMAEN/
# TXDMAEN/ATDMAEN are set; the SDMA engine (a separate node, fsl,imx*-sdma) does the
# transfers. Binding Documentation/devicetree/bindings/serial/fsl-imx-uart.yaml.
class ImxUart(MaskedRegisterDriver):
    """i.MX UART (imx21 and imx6q types); DMA enables masked out when the node has ``dmas``."""

    name = "fsl-imx-uart"
    compatibles = ("fsl,imx21-uart", "fsl,imx53-uart", "fsl,imx6q-uart")
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/imx.c: register FIFOs (URXD/UTXD) plus SDMA slave requests "
        "enabled by UCR1 RXDMAEN/TXDMAEN/ATDMAEN; the SDMA engine is a separate node; "
        "binding Documentation/devicetree/bindings/serial/fsl-imx-uart.yaml"
    )
    dma_traps = (
        Trap(0, 0x80, 4, "UCR1", "RXDMAEN/TXDMAEN/ATDMAEN masked: no SDMA requests"),
        Trap(0, 0x8C, 4, "UCR4", "IDDMAEN masked: no DMA idle detection"),
    )
    masked_bits = {"UCR1": IMX_UCR1_DMA_BITS, "UCR4": IMX_UCR4_DMA_BITS}
    # Reference-manual reset values: UCR1 = 0 (UART, its interrupts and DMA off), UCR2 = 1
    # (SRST_B released; RX, TX and their interrupts off), UCR3 = 0x0700 (no interrupt
    # enables), UCR4 = 0x8000 (CTS trigger 32; no interrupt or DMA enables).
    reset_sequence = (
        RegisterWrite(0, 0x80, 4, 0x0000),
        RegisterWrite(0, 0x84, 4, 0x0001),
        RegisterWrite(0, 0x88, 4, 0x0700),
        RegisterWrite(0, 0x8C, 4, 0x8000),
    )


#: I2CR/IBCR DMAEN bit (i2c-imx.c I2CR_DMAEN).
IMX_I2CR_DMAEN = 0x02


# Evidence: drivers/i2c/busses/i2c-imx.c: byte registers I2CR/I2SR/I2DR; with ``dmas`` the
# controller raises eDMA/SDMA requests when I2CR_DMAEN is set. Binding
# Documentation/devicetree/bindings/i2c/i2c-imx.yaml.
class ImxI2c(MaskedRegisterDriver):
    """i.MX I2C (register shift 2: IADR 0x00, IFDR 0x04, I2CR 0x08, I2SR 0x0c, I2DR 0x10)."""

    name = "fsl-imx-i2c"
    compatibles = ("fsl,imx1-i2c", "fsl,imx21-i2c")
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-imx.c: byte-wide control/status/data registers, DMA only "
        "as slave requests gated by I2CR_DMAEN; binding "
        "Documentation/devicetree/bindings/i2c/i2c-imx.yaml"
    )
    # Byte registers 4 bytes apart; i2c-imx.c reaches them with readb/writeb only.
    dma_traps = (Trap(0, 0x08, 1, "I2CR", "DMAEN masked: no DMA requests"),)
    masked_bits = {"I2CR": IMX_I2CR_DMAEN}
    # I2CR = 0: module and its interrupt disabled; I2SR = 0: flags cleared (write-0 type).
    reset_sequence = (
        RegisterWrite(0, 0x08, 1, 0),
        RegisterWrite(0, 0x0C, 1, 0),
    )


# Evidence: drivers/i2c/busses/i2c-imx.c (vf610_i2c_hwdata: register shift 0, inverted
# enable, write-1-to-clear flags); binding Documentation/devicetree/bindings/i2c/i2c-imx.yaml.
class VybridI2c(MaskedRegisterDriver):
    """Vybrid/Layerscape I2C: the i.MX I2C with byte-spaced registers (IBCR at 0x02)."""

    name = "fsl-vf610-i2c"
    compatibles = ("fsl,vf610-i2c",)
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-imx.c (vf610 layout, register shift 0): byte registers, "
        "DMA only as slave requests gated by IBCR DMAEN; binding "
        "Documentation/devicetree/bindings/i2c/i2c-imx.yaml"
    )
    dma_traps = (Trap(0, 0x02, 1, "IBCR", "DMAEN masked: no DMA requests"),)
    masked_bits = {"IBCR": IMX_I2CR_DMAEN}
    # IBCR = 0x80: MDIS set (module disabled on Vybrid), IBIE clear (interrupt off);
    # IBSR (0x03) = 0x12: clear IBAL and IBIF (write-1-to-clear).
    reset_sequence = (
        RegisterWrite(0, 0x02, 1, 0x80),
        RegisterWrite(0, 0x03, 1, 0x12),
    )


# Evidence: drivers/watchdog/imx2_wdt.c: WCR/WSR/WRSR/WICR/WMCR 16-bit registers; binding
# Documentation/devicetree/bindings/watchdog/fsl-imx-wdt.yaml.
class ImxWdt(PlatformDriver):
    """i.MX WDOG (also Layerscape ``fsl,ls1012a-wdt`` via its fallback).

    No reset sequence: WCR.WDE is write-once - imx2_wdt.c cannot stop a started watchdog
    (it sets WDOG_HW_RUNNING and pings it instead), and WICR.WIE is write-once as well.
    """

    name = "fsl-imx-wdt"
    compatibles = ("fsl,imx21-wdt",)
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/imx2_wdt.c: 16-bit control/service registers only; binding "
        "Documentation/devicetree/bindings/watchdog/fsl-imx-wdt.yaml"
    )
    unstoppable = "WCR.WDE is write-once: imx2_wdt.c cannot stop a started WDOG"


# Evidence: drivers/pwm/pwm-imx27.c: PWMCR/PWMSR/PWMIR/PWMSAR/PWMPR registers, sample FIFO
# written by the CPU; binding Documentation/devicetree/bindings/pwm/imx-pwm.yaml.
class ImxPwm(PlatformDriver):
    """i.MX27-type PWM (i.MX6/7/8)."""

    name = "fsl-imx27-pwm"
    compatibles = ("fsl,imx27-pwm",)
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-imx27.c: control, status, interrupt and sample/period "
        "registers written by the CPU; binding Documentation/devicetree/bindings/pwm/imx-pwm.yaml"
    )
    # PWMIR (0x08) = 0: interrupts off; PWMCR (0x00) = 0: PWM disabled.
    reset_sequence = (
        RegisterWrite(0, 0x08, 4, 0),
        RegisterWrite(0, 0x00, 4, 0),
    )


#: eCSPI DMA register request enables: TEDEN (7), RXDEN (23), RXTDEN (31).
ECSPI_DMA_ENABLE_BITS = (1 << 7) | (1 << 23) | (1 << 31)


# Evidence: drivers/spi/spi-imx.c (MX51_ECSPI_*): PIO TXDATA/RXDATA FIFOs; SDMA slave requests
# enabled by MX51_ECSPI_DMA TEDEN/RXDEN/RXTDEN. Binding
# Documentation/devicetree/bindings/spi/fsl-imx-cspi.yaml.
class ImxEcspi(MaskedRegisterDriver):
    """i.MX51-and-later eCSPI; the DMA register keeps its watermarks, loses its enables."""

    name = "fsl-imx51-ecspi"
    compatibles = ("fsl,imx51-ecspi", "fsl,imx53-ecspi")
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-imx.c: PIO FIFOs, SDMA slave requests gated by the eCSPI DMA "
        "register's TEDEN/RXDEN/RXTDEN; binding "
        "Documentation/devicetree/bindings/spi/fsl-imx-cspi.yaml"
    )
    dma_traps = (Trap(0, 0x14, 4, "ECSPI_DMA", "TEDEN/RXDEN/RXTDEN masked: no SDMA requests"),)
    masked_bits = {"ECSPI_DMA": ECSPI_DMA_ENABLE_BITS}
    # INT (0x10) = 0: interrupts off; CONREG (0x08) = 0: block disabled.
    reset_sequence = (
        RegisterWrite(0, 0x10, 4, 0),
        RegisterWrite(0, 0x08, 4, 0),
    )


#: i.MX LPUART registers sit 0x10 above the node's base (VERID/PARAM/GLOBAL/PINCFG first).
_LPUART_IMX_OFFSET = 0x10
#: LPUART BAUD bits that raise eDMA requests: TDMAE (23), RDMAE (21), RIDMAE (20).
IMX_LPUART_BAUD_DMA_BITS = (1 << 23) | (1 << 21) | (1 << 20)


# Evidence: drivers/tty/serial/fsl_lpuart.c (imx7ulp/imx8qxp data: 32-bit, reg_off 0x10):
# data FIFO UART, eDMA slave requests gated by BAUD TDMAE/RDMAE. Binding
# Documentation/devicetree/bindings/serial/fsl-lpuart.yaml.
class ImxLpuart(MaskedRegisterDriver):
    """i.MX7ULP/8QXP/8ULP/93 LPUART (little-endian, registers at +0x10)."""

    name = "fsl-imx-lpuart"
    compatibles = ("fsl,imx7ulp-lpuart", "fsl,imx8qxp-lpuart")
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/fsl_lpuart.c (imx7ulp_data, reg_off 0x10): data FIFO "
        "UART, eDMA slave requests gated by BAUD TDMAE/RDMAE; binding "
        "Documentation/devicetree/bindings/serial/fsl-lpuart.yaml"
    )
    dma_traps = (
        Trap(0, _LPUART_IMX_OFFSET + 0x00, 4, "BAUD", "TDMAE/RDMAE/RIDMAE masked"),
    )
    masked_bits = {"BAUD": IMX_LPUART_BAUD_DMA_BITS}
    # CTRL (+0x08) = 0: transmitter, receiver and interrupts off.
    reset_sequence = (RegisterWrite(0, _LPUART_IMX_OFFSET + 0x08, 4, 0),)


# Evidence: drivers/i2c/busses/i2c-imx-lpi2c.c: master FIFO registers (MTDR/MRDR); DMA only
# through eDMA slave channels enabled by MDER TDDE/RDDE. Binding
# Documentation/devicetree/bindings/i2c/i2c-imx-lpi2c.yaml.
class ImxLpi2c(PlatformDriver):
    """i.MX7ULP-and-later low-power I2C."""

    name = "fsl-imx-lpi2c"
    compatibles = ("fsl,imx7ulp-lpi2c",)
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-imx-lpi2c.c: FIFO registers served by the CPU, DMA "
        "only as slave requests enabled in MDER; binding "
        "Documentation/devicetree/bindings/i2c/i2c-imx-lpi2c.yaml"
    )
    # MDER (0x1c) holds only TDDE (bit 0) and RDDE (bit 1).
    dma_traps = (Trap(0, 0x1C, 4, "MDER", "TX/RX DMA enables: read as zero"),)
    # MIER (0x18) = 0: interrupts off; MCR (0x10) = 0: master disabled; MDER = 0.
    reset_sequence = (
        RegisterWrite(0, 0x18, 4, 0),
        RegisterWrite(0, 0x10, 4, 0),
        RegisterWrite(0, 0x1C, 4, 0),
    )


DRIVERS = (ImxGpio, ImxUart, ImxI2c, VybridI2c, ImxWdt, ImxPwm, ImxEcspi, ImxLpuart, ImxLpi2c)
