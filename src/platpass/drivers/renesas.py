"""Renesas R-Car / RZ/G low-speed peripherals: (H)SCIF, GPIO, I2C, watchdog, PWM."""

from __future__ import annotations

from platpass.drivers.common import PlatformDriver, RegisterWrite, Trap


# Evidence: drivers/tty/serial/sh-sci.c: SCSMR/SCBRR/SCSCR/SCFTDR/SCFSR/SCFRDR registers; with
# ``dmas`` the SYS-DMAC (a separate node) moves data on the SCIF's TXI/RXI requests. Binding
# Documentation/devicetree/bindings/serial/renesas,scif.yaml and renesas,hscif.yaml.
class RcarScif(PlatformDriver):
    """R-Car Gen2/Gen3 SCIF and HSCIF.

    No DMA trap: (H)SCIF has no DMA-request enable of its own (the SCIFA/SCIFB RDRQE/TDRQE
    bits do not exist here). Its DMA requests are the TXI/RXI conditions, acted on only by a
    SYS-DMAC channel the host programs with this SCIF's MID/RID - and the host programs none
    for an assigned device. The guest node drops ``dmas``.
    """

    name = "renesas-scif"
    compatibles = (
        "renesas,scif",
        "renesas,rcar-gen2-scif",
        "renesas,rcar-gen3-scif",
        "renesas,hscif",
        "renesas,rcar-gen2-hscif",
        "renesas,rcar-gen3-hscif",
    )
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/sh-sci.c: FIFO registers served by the CPU or by an external "
        "SYS-DMAC slave channel (dmas); binding "
        "Documentation/devicetree/bindings/serial/renesas,scif.yaml"
    )
    # SCSCR (0x08, 16-bit) = 0: TE/RE and every interrupt enable off.
    reset_sequence = (RegisterWrite(0, 0x08, 2, 0),)


# Evidence: drivers/gpio/gpio-rcar.c: IOINTSEL/INOUTSEL/OUTDT/INDT/INTDT/INTCLR/INTMSK/
# MSKCLR/POSNEG/EDGLEVEL registers; binding
# Documentation/devicetree/bindings/gpio/renesas,rcar-gpio.yaml.
class RcarGpio(PlatformDriver):
    """R-Car GPIO block (pin function selection stays in the PFC, with the host)."""

    name = "renesas-rcar-gpio"
    compatibles = (
        "renesas,gpio-rcar",
        "renesas,rcar-gen1-gpio",
        "renesas,rcar-gen2-gpio",
        "renesas,rcar-gen3-gpio",
        "renesas,rcar-gen4-gpio",
    )
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-rcar.c: data, direction and interrupt registers only; "
        "binding Documentation/devicetree/bindings/gpio/renesas,rcar-gpio.yaml"
    )
    # INTMSK (0x18) all ones: every interrupt masked; INTCLR (0x14) all ones: clear pending.
    reset_sequence = (
        RegisterWrite(0, 0x18, 4, 0xFFFFFFFF),
        RegisterWrite(0, 0x14, 4, 0xFFFFFFFF),
    )


# Evidence: drivers/i2c/busses/i2c-rcar.c: ICSCR/ICMCR/ICSSR/ICMSR/ICSIER/ICMIER/ICRXTX
# registers; DMA through a SYS-DMAC slave channel enabled by ICDMAER. Binding
# Documentation/devicetree/bindings/i2c/renesas,rcar-i2c.yaml.
class RcarI2c(PlatformDriver):
    """R-Car Gen2/Gen3 I2C controller."""

    name = "renesas-rcar-i2c"
    compatibles = ("renesas,rcar-gen2-i2c", "renesas,rcar-gen3-i2c")
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-rcar.c: byte data register served by the CPU or by an "
        "external SYS-DMAC channel (dmas) enabled through ICDMAER; binding "
        "Documentation/devicetree/bindings/i2c/renesas,rcar-i2c.yaml"
    )
    # ICDMAER holds only the four DMA enables (RSDMAE/TSDMAE/RMDMAE/TMDMAE).
    dma_traps = (Trap(0, 0x3C, 4, "ICDMAER", "DMA enables: read as zero, writes ignored"),)
    # ICSIER/ICMIER = 0: interrupts off; ICSCR/ICMCR = 0: slave and master disabled;
    # ICDMAER = 0: DMA enables off.
    reset_sequence = (
        RegisterWrite(0, 0x10, 4, 0),
        RegisterWrite(0, 0x14, 4, 0),
        RegisterWrite(0, 0x00, 4, 0),
        RegisterWrite(0, 0x04, 4, 0),
        RegisterWrite(0, 0x3C, 4, 0),
    )


#: RWTCSRA writes must carry this key in the upper bits (renesas_wdt.c rwdt_write).
_RWTCSRA_KEY = 0xA5A5A500


# Evidence: drivers/watchdog/renesas_wdt.c: RWTCNT/RWTCSRA/RWTCSRB registers; binding
# Documentation/devicetree/bindings/watchdog/renesas,wdt.yaml.
class RcarWdt(PlatformDriver):
    """R-Car Gen3 RWDT."""

    name = "renesas-rcar-wdt"
    compatibles = ("renesas,rcar-gen2-wdt", "renesas,rcar-gen3-wdt")
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/renesas_wdt.c: counter and control/status registers only; "
        "binding Documentation/devicetree/bindings/watchdog/renesas,wdt.yaml"
    )
    # RWTCSRA (0x04) = key | 0: TME clear - the watchdog stops (rwdt_stop does the same).
    reset_sequence = (RegisterWrite(0, 0x04, 4, _RWTCSRA_KEY),)


# Evidence: drivers/pwm/pwm-rcar.c: PWMCR/PWMCNT registers; binding
# Documentation/devicetree/bindings/pwm/renesas,pwm-rcar.yaml.
class RcarPwm(PlatformDriver):
    """R-Car PWM timer channel."""

    name = "renesas-pwm-rcar"
    compatibles = ("renesas,pwm-rcar",)
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-rcar.c: control and count registers only; binding "
        "Documentation/devicetree/bindings/pwm/renesas,pwm-rcar.yaml"
    )
    # PWMCR (0x00) = 0: EN0 clear, channel stopped.
    reset_sequence = (RegisterWrite(0, 0x00, 4, 0),)


DRIVERS = (RcarScif, RcarGpio, RcarI2c, RcarWdt, RcarPwm)
