"""Broadcom BCM283x (Raspberry Pi) low-speed peripherals: mini UART, I2C (BSC), PWM.

Not declared, on purpose: ``brcm,bcm2835-gpio`` is the SoC's pin controller as well (its
GPFSEL registers choose every pin's function, including the host's own UART and SD pins),
so handing it to a guest would hand over the host's pins.
"""

from __future__ import annotations

from platpass.drivers.common import PlatformDriver, RegisterWrite, Trap


# Evidence: drivers/tty/serial/8250/8250_bcm2835aux.c: a 16550 subset with register shift 2,
# no DMA; binding Documentation/devicetree/bindings/serial/brcm,bcm2835-aux-uart.yaml. The
# enable bit lives in the sibling "brcm,bcm2835-aux" block, which stays with the host.
class Bcm2835AuxUart(PlatformDriver):
    """BCM2835 auxiliary "mini" UART."""

    name = "brcm-bcm2835-aux-uart"
    compatibles = ("brcm,bcm2835-aux-uart",)
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/8250/8250_bcm2835aux.c: 16550-subset register file, CPU "
        "driven, no DMA; binding "
        "Documentation/devicetree/bindings/serial/brcm,bcm2835-aux-uart.yaml"
    )
    # AUX_MU_LCR (0x0c) = 3: 8 bits, DLAB off; AUX_MU_IER (0x04) = 0: interrupts off.
    reset_sequence = (
        RegisterWrite(0, 0x0C, 4, 0x03),
        RegisterWrite(0, 0x04, 4, 0),
    )


# Evidence: drivers/i2c/busses/i2c-bcm2835.c: C/S/DLEN/A/FIFO/DIV registers with a 16-byte
# FIFO served by the CPU; binding Documentation/devicetree/bindings/i2c/brcm,bcm2835-i2c.yaml.
class Bcm2835I2c(PlatformDriver):
    """BCM2835/BCM2711 BSC I2C master."""

    name = "brcm-bcm2835-i2c"
    compatibles = ("brcm,bcm2835-i2c", "brcm,bcm2711-i2c")
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-bcm2835.c: CPU-served FIFO, no DMA; binding "
        "Documentation/devicetree/bindings/i2c/brcm,bcm2835-i2c.yaml"
    )
    # C (0x00) = 0x30: I2CEN and interrupt enables off, CLEAR FIFO.
    reset_sequence = (RegisterWrite(0, 0x00, 4, 0x30),)


# Evidence: drivers/pwm/pwm-bcm2835.c programs only CTL and the per-channel RNG/DAT registers;
# the BCM2835 ARM Peripherals manual (PWM chapter) adds STA, the FIFO and DMAC, whose ENAB bit
# (31) raises DREQs to the host's DMA engine. Binding
# Documentation/devicetree/bindings/pwm/pwm-bcm2835.yaml.
class Bcm2835Pwm(PlatformDriver):
    """BCM2835 two-channel PWM."""

    name = "brcm-bcm2835-pwm"
    compatibles = ("brcm,bcm2835-pwm",)
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-bcm2835.c: control and range/data registers; DMA only as "
        "DREQ requests gated by DMAC.ENAB (BCM2835 ARM Peripherals, PWM); binding "
        "Documentation/devicetree/bindings/pwm/pwm-bcm2835.yaml"
    )
    dma_traps = (Trap(0, 0x08, 4, "DMAC", "DREQ enable and thresholds: read as zero"),)
    # CTL (0x00) = 0: both channels off; DMAC (0x08) = 0: no DREQs.
    reset_sequence = (
        RegisterWrite(0, 0x00, 4, 0),
        RegisterWrite(0, 0x08, 4, 0),
    )


DRIVERS = (Bcm2835AuxUart, Bcm2835I2c, Bcm2835Pwm)
