"""Amlogic Meson low-speed peripherals: UART, watchdog, I2C and PWM.

Not declared, on purpose: the Meson SAR ADC (``amlogic,meson-saradc``) is shared with the
BL30 system-control firmware on GXBB and later (meson_saradc.c takes a hardware lock
against BL30 before every conversion), so it is not the host's to give away; the GPIO
interrupt multiplexer (``amlogic,meson-gpio-intc``) routes lines for the whole SoC.
"""

from __future__ import annotations

from platpass.drivers.common import PlatformDriver, RegisterWrite


# Evidence: drivers/tty/serial/meson_uart.c: WFIFO/RFIFO/CONTROL/STATUS/MISC/REG5 registers,
# the CPU moves every byte; binding
# Documentation/devicetree/bindings/serial/amlogic,meson-uart.yaml.
class MesonUart(PlatformDriver):
    """Amlogic Meson UART (EE and always-on domains)."""

    name = "amlogic-meson-uart"
    compatibles = (
        "amlogic,meson6-uart",
        "amlogic,meson8-uart",
        "amlogic,meson8b-uart",
        "amlogic,meson-gx-uart",
        "amlogic,meson-g12a-uart",
        "amlogic,meson-s4-uart",
        "amlogic,meson-ao-uart",
    )
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/meson_uart.c: register FIFOs moved by the CPU, no DMA; "
        "binding Documentation/devicetree/bindings/serial/amlogic,meson-uart.yaml"
    )
    # CONTROL (0x08) = 0: transmitter, receiver and their interrupts off.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


# Evidence: drivers/watchdog/meson_gxbb_wdt.c: CTRL/CTRL1/TCNT/RSET registers; binding
# Documentation/devicetree/bindings/watchdog/amlogic,meson-gxbb-wdt.yaml.
class MesonGxbbWdt(PlatformDriver):
    """Amlogic GXBB-and-later watchdog."""

    name = "amlogic-meson-gxbb-wdt"
    compatibles = ("amlogic,meson-gxbb-wdt", "amlogic,t7-wdt")
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/meson_gxbb_wdt.c: control, timeout and reset registers "
        "only; binding Documentation/devicetree/bindings/watchdog/amlogic,meson-gxbb-wdt.yaml"
    )
    # CTRL (0x00) = 0: EN (bit 18) clear - meson_gxbb_wdt_stop clears exactly that bit.
    reset_sequence = (RegisterWrite(0, 0x00, 4, 0),)


# Evidence: drivers/i2c/busses/i2c-meson.c: CTRL/SLAVE_ADDR/TOK_LIST/TOK_WDATA/TOK_RDATA
# registers holding at most 8 bytes per batch, CPU filled; binding
# Documentation/devicetree/bindings/i2c/amlogic,meson6-i2c.yaml.
class MesonI2c(PlatformDriver):
    """Amlogic Meson I2C master."""

    name = "amlogic-meson-i2c"
    compatibles = ("amlogic,meson6-i2c", "amlogic,meson-gxbb-i2c", "amlogic,meson-axg-i2c")
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-meson.c: token list and 8-byte data registers filled "
        "by the CPU, no DMA; binding Documentation/devicetree/bindings/i2c/amlogic,meson6-i2c.yaml"
    )
    # CTRL (0x00) = 0: no transfer started (START bit clear).
    reset_sequence = (RegisterWrite(0, 0x00, 4, 0),)


# Evidence: drivers/pwm/pwm-meson.c: DUTY_A/DUTY_B/MISC_AB registers; binding
# Documentation/devicetree/bindings/pwm/pwm-amlogic.yaml. The always-on PWMs often feed a
# pwm-regulator for the CPU rail: the firmware layer must refuse a PWM with host consumers.
class MesonPwm(PlatformDriver):
    """Amlogic Meson two-channel PWM block."""

    name = "amlogic-meson-pwm"
    compatibles = (
        "amlogic,meson8b-pwm",
        "amlogic,meson-gxbb-pwm",
        "amlogic,meson-gxbb-ao-pwm",
        "amlogic,meson-axg-ee-pwm",
        "amlogic,meson-axg-ao-pwm",
        "amlogic,meson-g12a-ee-pwm",
        "amlogic,meson-g12a-ao-pwm-ab",
        "amlogic,meson-g12a-ao-pwm-cd",
    )
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-meson.c: duty and MISC control registers only; binding "
        "Documentation/devicetree/bindings/pwm/pwm-amlogic.yaml"
    )
    # MISC_AB (0x08) = 0: both outputs disabled and their clock dividers gated.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


DRIVERS = (MesonUart, MesonGxbbWdt, MesonI2c, MesonPwm)
