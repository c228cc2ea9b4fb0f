"""Allwinner (sunxi) low-speed peripherals: watchdog, RTC, I2C (TWI), PWM and LRADC.

Allwinner UARTs are DesignWare APB UARTs and match through ``snps,dw-apb-uart``.
"""

from __future__ import annotations

from platpass.drivers.common import MaskedRegisterDriver, PlatformDriver, RegisterWrite, Trap


# Evidence: drivers/watchdog/sunxi_wdt.c (sun6i_wdt_reg: IRQ_EN 0x00, CTRL 0x10, CFG 0x14,
# MODE 0x18); binding Documentation/devicetree/bindings/watchdog/allwinner,sun4i-a10-wdt.yaml.
class Sun6iWdt(PlatformDriver):
    """Allwinner A31-style watchdog (A64, H3, H5, H6 fall back to it).

    Caveat for users: on these SoCs the watchdog is also the host kernel's restart handler;
    once it is assigned, the host reboots through PSCI or not at all.
    """

    name = "allwinner-sun6i-wdt"
    compatibles = ("allwinner,sun6i-a31-wdt", "allwinner,sun50i-a64-wdt")
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/sunxi_wdt.c: IRQ_EN/CTRL/CFG/MODE registers only; binding "
        "Documentation/devicetree/bindings/watchdog/allwinner,sun4i-a10-wdt.yaml"
    )
    # MODE (0x18) = 0: watchdog stopped; IRQ_EN (0x00) = 0: interrupt off.
    reset_sequence = (
        RegisterWrite(0, 0x18, 4, 0),
        RegisterWrite(0, 0x00, 4, 0),
    )


# Evidence: drivers/rtc/rtc-sun6i.c: calendar, alarm and oscillator-control registers;
# binding Documentation/devicetree/bindings/rtc/allwinner,sun6i-a31-rtc.yaml.
class Sun6iRtc(MaskedRegisterDriver):
    """Allwinner A31-style RTC.

    This block also provides the 32 kHz clock that the rest of the SoC runs on (LOSC_CTRL
    selects the source, LOSC_OUT_GATING gates the output pin). Those two registers are
    trapped write-protected: the guest reads them but cannot switch the host's clock.
    """

    name = "allwinner-sun6i-rtc"
    compatibles = (
        "allwinner,sun6i-a31-rtc",
        "allwinner,sun8i-a23-rtc",
        "allwinner,sun8i-h3-rtc",
        "allwinner,sun8i-r40-rtc",
        "allwinner,sun8i-v3-rtc",
        "allwinner,sun50i-h5-rtc",
        "allwinner,sun50i-h6-rtc",
        "allwinner,sun50i-h616-rtc",
    )
    family = "rtc"
    evidence = (
        "Linux drivers/rtc/rtc-sun6i.c: date/time, alarm and LOSC control registers, no DMA; "
        "binding Documentation/devicetree/bindings/rtc/allwinner,sun6i-a31-rtc.yaml"
    )
    traps = (
        Trap(0, 0x00, 4, "LOSC_CTRL", "32 kHz source of the whole SoC: writes ignored"),
        Trap(0, 0x60, 4, "LOSC_OUT_GATING", "host clock output: writes ignored"),
    )
    write_protected = frozenset({"LOSC_CTRL", "LOSC_OUT_GATING"})
    # Alarm 0 and alarm 1 and their interrupts off; ALARM_CONFIG wake-up off.
    reset_sequence = (
        RegisterWrite(0, 0x2C, 4, 0),  # ALRM_IRQ_EN
        RegisterWrite(0, 0x28, 4, 0),  # ALRM_EN
        RegisterWrite(0, 0x48, 4, 0),  # ALRM1_IRQ_EN
        RegisterWrite(0, 0x44, 4, 0),  # ALRM1_EN
        RegisterWrite(0, 0x50, 4, 0),  # ALARM_CONFIG
    )


# Evidence: drivers/i2c/busses/i2c-mv64xxx.c (Allwinner register map: ADDR 0x00, DATA 0x08,
# CONTROL 0x0c, STATUS 0x10, BAUD 0x14, SOFT_RESET 0x18): byte-at-a-time, CPU driven; binding
# Documentation/devicetree/bindings/i2c/marvell,mv64xxx-i2c.yaml.
class SunxiI2c(PlatformDriver):
    """Allwinner TWI (an mv64xxx I2C with the sun4i register map)."""

    name = "allwinner-sunxi-i2c"
    compatibles = (
        "allwinner,sun4i-a10-i2c",
        "allwinner,sun6i-a31-i2c",
        "allwinner,sun8i-v536-i2c",
    )
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-mv64xxx.c (mv64xxx_i2c_regs_sun4i): one data byte per "
        "interrupt, CPU driven, no DMA; binding "
        "Documentation/devicetree/bindings/i2c/marvell,mv64xxx-i2c.yaml"
    )
    # CONTROL (0x0c) = 0: bus disabled, interrupt off.
    reset_sequence = (RegisterWrite(0, 0x0C, 4, 0),)


# Evidence: drivers/pwm/pwm-sun4i.c: CTRL plus per-channel PERIOD registers; binding
# Documentation/devicetree/bindings/pwm/allwinner,sun4i-a10-pwm.yaml.
class Sun4iPwm(PlatformDriver):
    """Allwinner sun4i-style two-channel PWM (A64 falls back to sun5i-a13)."""

    name = "allwinner-sun4i-pwm"
    compatibles = (
        "allwinner,sun4i-a10-pwm",
        "allwinner,sun5i-a10s-pwm",
        "allwinner,sun5i-a13-pwm",
        "allwinner,sun7i-a20-pwm",
        "allwinner,sun8i-h3-pwm",
    )
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-sun4i.c: CTRL and PERIOD registers only; binding "
        "Documentation/devicetree/bindings/pwm/allwinner,sun4i-a10-pwm.yaml"
    )
    # CTRL (0x00) = 0: both channels disabled and their clocks gated.
    reset_sequence = (RegisterWrite(0, 0x00, 4, 0),)


# Evidence: drivers/input/keyboard/sun4i-lradc-keys.c: CTRL/INTC/INTS/DATA registers;
# binding Documentation/devicetree/bindings/input/allwinner,sun4i-a10-lradc-keys.yaml.
class Sun4iLradc(PlatformDriver):
    """Allwinner low-resolution ADC used for resistor-ladder keys."""

    name = "allwinner-sun4i-lradc"
    compatibles = (
        "allwinner,sun4i-a10-lradc-keys",
        "allwinner,sun8i-a83t-r-lradc",
        "allwinner,sun50i-r329-lradc",
    )
    family = "adc"
    evidence = (
        "Linux drivers/input/keyboard/sun4i-lradc-keys.c: control, interrupt and data "
        "registers only; binding "
        "Documentation/devicetree/bindings/input/allwinner,sun4i-a10-lradc-keys.yaml"
    )
    # INTC (0x04) = 0: interrupts off; CTRL (0x00) = 0: ADC off.
    reset_sequence = (
        RegisterWrite(0, 0x04, 4, 0),
        RegisterWrite(0, 0x00, 4, 0),
    )


#: FIFO_CTL bits that raise DRQs to the DMA engine: RF_DRQ_EN (8) and TF_DRQ_EN (24).
SUN6I_SPI_FIFO_DRQ_BITS = (1 << 8) | (1 << 24)


# Evidence: drivers/spi/spi-sun6i.c: TXD/RXD FIFO registers; with ``dmas`` the DMA engine is
# fed through DRQs enabled by FIFO_CTL RF_DRQ_EN/TF_DRQ_EN. Binding
# Documentation/devicetree/bindings/spi/allwinner,sun6i-a31-spi.yaml.
class Sun6iSpi(MaskedRegisterDriver):
    """Allwinner A31/H3-style SPI controller."""

    name = "allwinner-sun6i-spi"
    compatibles = ("allwinner,sun6i-a31-spi", "allwinner,sun8i-h3-spi")
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-sun6i.c: PIO FIFO registers, DMA only as DRQs enabled in "
        "FIFO_CTL; binding Documentation/devicetree/bindings/spi/allwinner,sun6i-a31-spi.yaml"
    )
    dma_traps = (Trap(0, 0x18, 4, "FIFO_CTL", "RF_DRQ_EN/TF_DRQ_EN masked: no DRQs"),)
    masked_bits = {"FIFO_CTL": SUN6I_SPI_FIFO_DRQ_BITS}
    # INT_CTL (0x10) = 0: interrupts off; GBL_CTL (0x04) = 0: bus disabled.
    reset_sequence = (
        RegisterWrite(0, 0x10, 4, 0),
        RegisterWrite(0, 0x04, 4, 0),
    )


DRIVERS = (Sun6iWdt, Sun6iRtc, SunxiI2c, Sun4iPwm, Sun4iLradc, Sun6iSpi)
