"""Rockchip low-speed peripherals: GPIO banks, I2C, PWM and the successive-approximation ADC.

Rockchip UARTs are DesignWare APB UARTs and match through their ``snps,dw-apb-uart``
fallback (:mod:`platpass.drivers.snps_dw`); so do Rockchip watchdogs (``snps,dw-wdt``).
"""

from __future__ import annotations

from platpass.drivers.common import PlatformDriver, RegisterWrite, Trap

#: Rockchip "write-mask" registers: the upper 16 bits select which lower bits a write changes.
_WRITE_MASK_ALL = 0xFFFF0000


# Evidence: drivers/gpio/gpio-rockchip.c: data, direction, interrupt and debounce registers
# (gpio_regs_v1 / gpio_regs_v2) and nothing that reaches memory; binding
# Documentation/devicetree/bindings/gpio/rockchip,gpio-bank.yaml.
class RockchipGpioBank(PlatformDriver):
    """One Rockchip GPIO bank (32 lines); pin muxing stays in the GRF, with the host.

    Two register layouts share the compatible: v1 (INT_EN at 0x30) and v2 (INT_EN_L/H at
    0x10/0x14 with write-masks; VER_ID at 0x78). The reset sequence is safe on both: on v1,
    0x10/0x14 are unimplemented port-B registers; on v2, writing 0 to 0x30 (INT_BOTHEDGE_L)
    carries a zero write-mask and changes nothing.
    """

    name = "rockchip-gpio-bank"
    compatibles = ("rockchip,gpio-bank",)
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-rockchip.c (gpio_regs_v1/v2: data, direction, interrupt "
        "and debounce registers only); binding "
        "Documentation/devicetree/bindings/gpio/rockchip,gpio-bank.yaml"
    )
    reset_sequence = (
        RegisterWrite(0, 0x10, 4, _WRITE_MASK_ALL),  # v2 INT_EN_L: lines 0-15 off
        RegisterWrite(0, 0x14, 4, _WRITE_MASK_ALL),  # v2 INT_EN_H: lines 16-31 off
        RegisterWrite(0, 0x30, 4, 0),  # v1 INT_EN: all lines off
    )


# Evidence: drivers/i2c/busses/i2c-rk3x.c: CPU-filled 32-byte TXDATA/RXDATA windows, no DMA
# path at all; binding Documentation/devicetree/bindings/i2c/i2c-rk3x.yaml.
class RockchipI2c(PlatformDriver):
    """Rockchip RK3x I2C controller."""

    name = "rockchip-rk3x-i2c"
    compatibles = (
        "rockchip,rk3066-i2c",
        "rockchip,rk3188-i2c",
        "rockchip,rk3228-i2c",
        "rockchip,rk3288-i2c",
        "rockchip,rk3399-i2c",
    )
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-rk3x.c: register-mapped TXDATA/RXDATA buffers filled "
        "by the CPU, no DMA; binding Documentation/devicetree/bindings/i2c/i2c-rk3x.yaml"
    )
    # REG_IEN (0x18) = 0: interrupts off; REG_CON (0x00) = 0: controller disabled.
    reset_sequence = (
        RegisterWrite(0, 0x18, 4, 0),
        RegisterWrite(0, 0x00, 4, 0),
    )


# Evidence: drivers/pwm/pwm-rockchip.c: per channel CNT/PERIOD/DUTY/CTRL registers; binding
# Documentation/devicetree/bindings/pwm/pwm-rockchip.yaml. Note: a PWM that feeds a host
# pwm-regulator must not be assigned; that is the consumer's business (firmware layer).
class RockchipPwm(PlatformDriver):
    """One Rockchip PWM channel (0x10 bytes: CNT, PERIOD, DUTY, CTRL)."""

    name = "rockchip-pwm"
    compatibles = ("rockchip,rk2928-pwm", "rockchip,rk3288-pwm", "rockchip,rk3328-pwm")
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-rockchip.c: PERIOD/DUTY/CTRL registers only; binding "
        "Documentation/devicetree/bindings/pwm/pwm-rockchip.yaml"
    )
    # CTRL (0x0c) = 0: channel disabled, output idle.
    reset_sequence = (RegisterWrite(0, 0x0C, 4, 0),)


# Evidence: drivers/iio/adc/rockchip_saradc.c: DATA/STAS/CTRL registers read by the CPU in
# the end-of-conversion interrupt; binding
# Documentation/devicetree/bindings/iio/adc/rockchip-saradc.yaml.
class RockchipSaradc(PlatformDriver):
    """Rockchip SARADC (v1 register layout: DATA, STAS, CTRL, DLY_PU_SOC)."""

    name = "rockchip-saradc"
    compatibles = ("rockchip,saradc", "rockchip,rk3399-saradc")
    family = "adc"
    evidence = (
        "Linux drivers/iio/adc/rockchip_saradc.c: conversion result read from DATA by the "
        "CPU, no DMA; binding Documentation/devicetree/bindings/iio/adc/rockchip-saradc.yaml"
    )
    # CTRL (0x08) = 0: powered down, interrupt disabled.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


# Evidence: drivers/spi/spi-rockchip.c: CTRLR/SSIENR/SER/BAUDR and TXDR/RXDR FIFO windows; DMA
# only through dmaengine slave channels (``dmas``) whose requests DMACR enables. Binding
# Documentation/devicetree/bindings/spi/spi-rockchip.yaml.
class RockchipSpi(PlatformDriver):
    """Rockchip SPI controller (a DesignWare SSI derivative)."""

    name = "rockchip-spi"
    compatibles = ("rockchip,rk3066-spi", "rockchip,rk3188-spi")
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-rockchip.c: PIO FIFO windows, DMA only as slave requests "
        "enabled by DMACR; binding Documentation/devicetree/bindings/spi/spi-rockchip.yaml"
    )
    # DMACR (0x3c) holds only RDMAE (bit 0) and TDMAE (bit 1).
    dma_traps = (Trap(0, 0x3C, 4, "DMACR", "RX/TX DMA request enables: read as zero"),)
    # IMR (0x2c) = 0: interrupts masked; SSIENR (0x08) = 0: controller off; DMACR = 0.
    reset_sequence = (
        RegisterWrite(0, 0x2C, 4, 0),
        RegisterWrite(0, 0x08, 4, 0),
        RegisterWrite(0, 0x3C, 4, 0),
    )


DRIVERS = (RockchipGpioBank, RockchipI2c, RockchipPwm, RockchipSaradc, RockchipSpi)
