"""NVIDIA Tegra (Tegra30 to Tegra210 and later) low-speed peripherals.

Tegra I2C, SPI and UART DMA goes through the APB DMA / GPC DMA engines, separate nodes that
stay with the host. The GPIO controller can also take pins away from their special function
(GPIO_CNF), so that part of it is write-protected.
"""

from __future__ import annotations

from platpass.drivers.common import (
    MaskedRegisterDriver,
    PlatformDriver,
    RegisterAccess,
    RegisterWrite,
    Trap,
    register_io_width,
)

# 16550 register file, register shift 2.
_UART_IER = 0x04
_UART_FCR = 0x08
_UART_LCR = 0x0C
_UART_MCR = 0x10
#: FCR bit 3: DMA mode select (serial-tegra.c sets it to hand the FIFOs to APB DMA).
TEGRA_UART_FCR_DMA = 1 << 3


# Evidence: drivers/tty/serial/serial-tegra.c (and 8250_of.c for PORT_TEGRA): a 16550-style
# register file; DMA only through APB DMA slave channels (``dmas``), selected by FCR[3].
# Binding Documentation/devicetree/bindings/serial/nvidia,tegra20-hsuart.yaml.
class TegraUart(MaskedRegisterDriver):
    """Tegra UART / HSUART (the FCR is write-only: IIR shares its offset)."""

    name = "nvidia-tegra-uart"
    compatibles = (
        "nvidia,tegra20-uart",
        "nvidia,tegra20-hsuart",
        "nvidia,tegra30-hsuart",
        "nvidia,tegra186-hsuart",
    )
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/serial-tegra.c and 8250/8250_of.c: 16550-style slave "
        "registers, DMA only through external APB DMA channels (dmas) selected by FCR[3]; "
        "binding Documentation/devicetree/bindings/serial/nvidia,tegra20-hsuart.yaml"
    )
    dma_traps = (Trap(0, _UART_FCR, 4, "FCR", "DMA mode select (bit 3) masked; IIR reads pass"),)
    masked_bits = {"FCR": TEGRA_UART_FCR_DMA}
    unmasked_reads = frozenset({"FCR"})
    # LCR 8N1 (DLAB off), IER = 0, MCR = 0, FCR = 0x07: FIFOs on and flushed, DMA mode off.
    reset_sequence = (
        RegisterWrite(0, _UART_LCR, 4, 0x03),
        RegisterWrite(0, _UART_IER, 4, 0),
        RegisterWrite(0, _UART_MCR, 4, 0),
        RegisterWrite(0, _UART_FCR, 4, 0x07),
    )

    def reset(self, regs: RegisterAccess) -> None:
        """The sequence above, each write as wide as ``reg-io-width`` (default 1: Tegra
        boards leave it out and Linux's 8250_of then uses byte accesses)."""
        width = register_io_width(self.node, 1)
        for step in self.reset_sequence:
            regs.write(step.region, step.offset, width, step.value)
        self.clear_masked_bits(regs)


# Evidence: drivers/i2c/busses/i2c-tegra.c: packet-mode TX/RX FIFO registers; with ``dmas``
# the APB DMA engine serves the FIFOs on their trigger levels - the controller has no DMA
# enable of its own. Binding Documentation/devicetree/bindings/i2c/nvidia,tegra20-i2c.yaml.
class TegraI2c(PlatformDriver):
    """Tegra I2C controller (not the DVC or VI variants, whose layouts differ)."""

    name = "nvidia-tegra-i2c"
    compatibles = (
        "nvidia,tegra20-i2c",
        "nvidia,tegra30-i2c",
        "nvidia,tegra114-i2c",
        "nvidia,tegra124-i2c",
        "nvidia,tegra210-i2c",
        "nvidia,tegra186-i2c",
        "nvidia,tegra194-i2c",
    )
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-tegra.c: FIFO registers served by the CPU or an "
        "external APB DMA channel (dmas); binding "
        "Documentation/devicetree/bindings/i2c/nvidia,tegra20-i2c.yaml"
    )
    # I2C_INT_MASK (0x064) = 0: every interrupt masked.
    reset_sequence = (RegisterWrite(0, 0x064, 4, 0),)


# Evidence: drivers/rtc/rtc-tegra.c: seconds/milliseconds counters, alarms and interrupt
# registers; binding Documentation/devicetree/bindings/rtc/nvidia,tegra20-rtc.yaml.
class TegraRtc(PlatformDriver):
    """Tegra RTC.

    Register writes land through a slow shadow (RTC_BUSY); the reset write is posted like any
    other and takes effect once the RTC is no longer busy.
    """

    name = "nvidia-tegra-rtc"
    compatibles = ("nvidia,tegra20-rtc",)
    family = "rtc"
    evidence = (
        "Linux drivers/rtc/rtc-tegra.c: counter, alarm and interrupt registers only; binding "
        "Documentation/devicetree/bindings/rtc/nvidia,tegra20-rtc.yaml"
    )
    # INTR_MASK (0x028) = 0: alarm and countdown interrupts off.
    reset_sequence = (RegisterWrite(0, 0x028, 4, 0),)


_TEGRA_PWM_CHANNELS = 4


# Evidence: drivers/pwm/pwm-tegra.c: one CSR per channel at 0x10 strides (enable bit 31,
# width, divider); binding Documentation/devicetree/bindings/pwm/nvidia,tegra20-pwm.yaml.
class TegraPwm(PlatformDriver):
    """Tegra20-style four-channel PWM (Tegra30/114/124/210 fall back to it)."""

    name = "nvidia-tegra-pwm"
    compatibles = ("nvidia,tegra20-pwm",)
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-tegra.c: one control register per channel; binding "
        "Documentation/devicetree/bindings/pwm/nvidia,tegra20-pwm.yaml"
    )
    # Every channel's CSR = 0: PWM_ENABLE clear.
    reset_sequence = tuple(
        RegisterWrite(0, 0x10 * channel, 4, 0) for channel in range(_TEGRA_PWM_CHANNELS)
    )


#: Tegra30-style GPIO: 8 banks of 0x100 bytes, 4 ports of 8 lines each (4-byte stride).
_TEGRA_GPIO_BANKS = 8
_TEGRA_GPIO_PORTS = 4
_GPIO_CNF = 0x00
_GPIO_INT_ENB = 0x50
_GPIO_MSK_CNF = 0x80


# Evidence: drivers/gpio/gpio-tegra.c: per-port CNF/OE/OUT/IN/INT_* registers and their
# masked-write twins (upper_offset 0x80); binding
# Documentation/devicetree/bindings/gpio/nvidia,tegra20-gpio.yaml.
class TegraGpio(MaskedRegisterDriver):
    """Tegra30-and-later GPIO controller.

    GPIO_CNF (and its masked twin) decide whether a pin is a GPIO or keeps its special
    function; a guest writing it could take the host's UART or SD pins. Both are trapped
    write-protected: the guest reads them and drives the pins the host already made GPIOs.
    """

    name = "nvidia-tegra-gpio"
    compatibles = ("nvidia,tegra30-gpio",)
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-tegra.c: data, direction and interrupt registers per port; "
        "binding Documentation/devicetree/bindings/gpio/nvidia,tegra20-gpio.yaml"
    )
    traps = tuple(
        trap
        for bank in range(_TEGRA_GPIO_BANKS)
        for trap in (
            Trap(0, 0x100 * bank + _GPIO_CNF, 0x10, f"CNF{bank}",
                 "GPIO/special-function select of the host's pins: writes ignored"),
            Trap(0, 0x100 * bank + _GPIO_MSK_CNF, 0x10, f"MSK_CNF{bank}",
                 "masked GPIO/special-function select: writes ignored"),
        )
    )
    write_protected = frozenset(
        name for bank in range(_TEGRA_GPIO_BANKS) for name in (f"CNF{bank}", f"MSK_CNF{bank}")
    )
    # INT_ENB of every port = 0: no line raises an interrupt.
    reset_sequence = tuple(
        RegisterWrite(0, 0x100 * bank + _GPIO_INT_ENB + 4 * port, 4, 0)
        for bank in range(_TEGRA_GPIO_BANKS)
        for port in range(_TEGRA_GPIO_PORTS)
    )


DRIVERS = (TegraUart, TegraI2c, TegraRtc, TegraPwm, TegraGpio)
