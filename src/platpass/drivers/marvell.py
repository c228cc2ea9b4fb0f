"""Marvell Armada/mvebu low-speed peripherals: RTC, UART, I2C and SPI."""

from __future__ import annotations

from platpass.drivers.common import MaskedRegisterDriver, PlatformDriver, RegisterWrite, Trap


# Evidence: drivers/rtc/rtc-armada38x.c: region "rtc" (STATUS, IRQ1/IRQ2_CONF, TIME, ALARM1/2)
# and region "rtc-soc" (bridge timing and interrupt mask); binding
# Documentation/devicetree/bindings/rtc/armada-380-rtc.txt.
class Armada38xRtc(PlatformDriver):
    """Armada 38x / 7k / 8k RTC: region 0 the RTC, region 1 its SoC glue registers."""

    name = "marvell-armada38x-rtc"
    compatibles = ("marvell,armada-380-rtc", "marvell,armada-8k-rtc")
    family = "rtc"
    evidence = (
        "Linux drivers/rtc/rtc-armada38x.c: time, alarm and interrupt registers in two small "
        "register regions, no DMA; binding Documentation/devicetree/bindings/rtc/armada-380-rtc.txt"
    )
    # IRQ1_CONF (0x04) and IRQ2_CONF (0x08) = 0: alarm and periodic interrupts off.
    reset_sequence = (
        RegisterWrite(0, 0x04, 4, 0),
        RegisterWrite(0, 0x08, 4, 0),
    )


# Evidence: drivers/tty/serial/mvebu-uart.c: RBR/TSH/CTRL/STAT/BRDV registers, one byte per
# access by the CPU; binding Documentation/devicetree/bindings/serial/marvell,armada-3700-uart.yaml.
class Armada3700Uart(PlatformDriver):
    """Armada 3700 standard UART (UART1 - the "-ext" UART2 has another layout)."""

    name = "marvell-armada3700-uart"
    compatibles = ("marvell,armada-3700-uart",)
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/mvebu-uart.c: byte registers moved by the CPU, no DMA; "
        "binding Documentation/devicetree/bindings/serial/marvell,armada-3700-uart.yaml"
    )
    # CTRL (0x08) = 0: TX/RX ready and break interrupts off, loopback off.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


# Evidence: drivers/i2c/busses/i2c-mv64xxx.c (mv64xxx_i2c_regs_mv64xxx: ADDR 0x00, DATA 0x04,
# CONTROL 0x08, STATUS/BAUD 0x0c, EXT_ADDR 0x10, SOFT_RESET 0x1c); binding
# Documentation/devicetree/bindings/i2c/marvell,mv64xxx-i2c.yaml.
class Mv64xxxI2c(PlatformDriver):
    """Marvell mv64xxx I2C (Armada 370/XP/38x/7k/8k CP110)."""

    name = "marvell-mv64xxx-i2c"
    compatibles = ("marvell,mv64xxx-i2c", "marvell,mv78230-i2c", "marvell,mv78230-a0-i2c")
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-mv64xxx.c: one byte per interrupt, CPU driven, no DMA; "
        "binding Documentation/devicetree/bindings/i2c/marvell,mv64xxx-i2c.yaml"
    )
    # CONTROL (0x08) = 0: bus disabled, interrupt off.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


# Evidence: drivers/i2c/busses/i2c-pxa.c (REGS_A3700: IBMR 0x00, IDBR 0x04, ICR 0x08, ISR 0x0c);
# binding Documentation/devicetree/bindings/i2c/i2c-pxa.yaml.
class Armada3700I2c(PlatformDriver):
    """Armada 3700 I2C (a PXA-family controller)."""

    name = "marvell-armada3700-i2c"
    compatibles = ("marvell,armada-3700-i2c",)
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-pxa.c (Armada 3700 register set): byte registers, "
        "CPU driven, no DMA; binding "
        "Documentation/devicetree/bindings/i2c/i2c-pxa.yaml"
    )
    # ICR (0x08) = 0: unit disabled, every interrupt enable off.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


# Evidence: drivers/spi/spi-orion.c: IF_CTRL/IF_CONFIG/DATA_OUT/DATA_IN/INT_CAUSE/INT_MASK
# registers, PIO only; binding Documentation/devicetree/bindings/spi/marvell,orion-spi.yaml.
class OrionSpi(PlatformDriver):
    """Marvell Orion/Armada SPI controller (PIO)."""

    name = "marvell-orion-spi"
    compatibles = (
        "marvell,orion-spi",
        "marvell,armada-370-spi",
        "marvell,armada-375-spi",
        "marvell,armada-380-spi",
        "marvell,armada-390-spi",
        "marvell,armada-xp-spi",
    )
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-orion.c: PIO data registers only, no DMA; binding "
        "Documentation/devicetree/bindings/spi/marvell,orion-spi.yaml"
    )
    # INT_MASK (0x14) = 0: interrupt off; IF_CTRL (0x00) = 0: chip select released.
    reset_sequence = (
        RegisterWrite(0, 0x14, 4, 0),
        RegisterWrite(0, 0x00, 4, 0),
    )


# Evidence: drivers/gpio/gpio-mvebu.c (orion layout: OUT, IO_CONF, BLINK_EN, IN_POL, DATA_IN,
# EDGE_CAUSE, EDGE_MASK 0x18, LEVEL_MASK 0x1c); binding
# Documentation/devicetree/bindings/gpio/gpio-mvebu.yaml.
class OrionGpio(PlatformDriver):
    """Marvell Orion-style GPIO bank (pin muxing stays with the MPP controller)."""

    name = "marvell-orion-gpio"
    compatibles = ("marvell,orion-gpio",)
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-mvebu.c: data, direction, blink and interrupt mask "
        "registers only; binding Documentation/devicetree/bindings/gpio/gpio-mvebu.yaml"
    )
    # EDGE_MASK (0x18) and LEVEL_MASK (0x1c) = 0: no line raises an interrupt.
    reset_sequence = (
        RegisterWrite(0, 0x18, 4, 0),
        RegisterWrite(0, 0x1C, 4, 0),
    )


#: ``A3700_SPI_IF_CFG_REG`` and its bit 18, ``A3700_SPI_DMA_RD_EN``: defined in
#: drivers/spi/spi-armada-3700.c but never used by it, so nothing public says what it does.
A3700_SPI_IF_CFG = 0x04
A3700_SPI_DMA_RD_EN = 1 << 18


# Evidence: drivers/spi/spi-armada-3700.c: IF_CTRL/IF_CFG/DATA_OUT/DATA_IN/INT_* registers,
# PIO only; binding Documentation/devicetree/bindings/spi/spi-armada-3700.txt.
class Armada3700Spi(MaskedRegisterDriver):
    """Armada 3700 SPI controller (PIO).

    ``IF_CFG`` holds the clock, FIFO and pin settings the guest driver needs beside bit 18,
    ``A3700_SPI_DMA_RD_EN``, which Linux defines and never sets: a name that says DMA and no
    public description of what it enables. It is masked (cleared from every write, read as
    zero) until someone shows it harmless.
    """

    name = "marvell-armada3700-spi"
    compatibles = ("marvell,armada-3700-spi",)
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-armada-3700.c: PIO data registers only, no DMA; binding "
        "Documentation/devicetree/bindings/spi/spi-armada-3700.txt"
    )
    traps = (
        Trap(0, A3700_SPI_IF_CFG, 4, "IF_CFG",
             "bit 18 (A3700_SPI_DMA_RD_EN, unused by Linux, undocumented) masked: cleared "
             "from writes, reads as zero; the other bits pass through"),
    )
    masked_bits = {"IF_CFG": A3700_SPI_DMA_RD_EN}
    # INT_MASK (0x2c) = 0: interrupts off; IF_CTRL (0x00) = 0: chip selects released.
    reset_sequence = (
        RegisterWrite(0, 0x2C, 4, 0),
        RegisterWrite(0, 0x00, 4, 0),
    )


DRIVERS = (Armada38xRtc, Armada3700Uart, Mv64xxxI2c, Armada3700I2c, OrionSpi, OrionGpio,
           Armada3700Spi)
