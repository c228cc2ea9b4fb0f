"""Texas Instruments OMAP/K3 peripherals: UART, I2C, GPIO, RTI watchdog and ePWM."""

from __future__ import annotations

from platpass.drivers.common import (
    MaskedRegisterDriver,
    PlatformDriver,
    RegisterAccess,
    RegisterWrite,
    Trap,
)

# OMAP UART registers (16550 layout, register shift 2).
_UART_IER = 0x04
_UART_FCR = 0x08
_UART_LCR = 0x0C
_UART_MCR = 0x10
_UART_MDR1 = 0x20
_UART_SCR = 0x40
#: LCR value that switches offset 0x08 from FCR to EFR (configuration mode B).
_LCR_CONF_MODE_B = 0xBF
#: FCR bit 3: DMA mode enable (used when SCR.DMAMODECTL is clear).
OMAP_UART_FCR_DMA_MODE = 1 << 3
#: SCR bits 0-2: DMAMODECTL and DMAMODE2 (which DMA request mode, if any).
OMAP_UART_SCR_DMA_BITS = 0x07
#: MDR1 value 7: UART disabled (8250_omap's UART_OMAP_MDR1_DISABLE).
_MDR1_DISABLE = 0x07


# Evidence: drivers/tty/serial/8250/8250_omap.c: a 16550 register file with TI extensions;
# DMA only through a dmaengine slave channel (``dmas``), requested by the UART when
# SCR.DMAMODECTL/DMAMODE2 or FCR[3] select a DMA mode. Binding
# Documentation/devicetree/bindings/serial/8250_omap.yaml.
class OmapUart(MaskedRegisterDriver):
    """TI OMAP/AM3/AM4/DRA7/K3 UART.

    FCR shares offset 0x08 with EFR (when LCR = 0xBF), so the FCR trap reads LCR to tell
    which one a write reaches: FCR writes lose bit 3, EFR writes pass untouched.
    """

    name = "ti-omap-uart"
    compatibles = (
        "ti,omap2-uart",
        "ti,omap3-uart",
        "ti,omap4-uart",
        "ti,am3352-uart",
        "ti,am4372-uart",
        "ti,dra742-uart",
        "ti,am654-uart",
    )
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/8250/8250_omap.c: 16550-style slave registers; DMA only as "
        "slave requests to an external engine (dmas), enabled by SCR DMAMODE or FCR[3]; "
        "binding Documentation/devicetree/bindings/serial/8250_omap.yaml"
    )
    dma_traps = (
        Trap(0, _UART_FCR, 4, "FCR", "DMA_MODE (bit 3) masked on FCR writes; EFR untouched"),
        Trap(0, _UART_SCR, 4, "SCR", "DMAMODECTL/DMAMODE2 masked: no DMA requests"),
    )
    masked_bits = {"FCR": OMAP_UART_FCR_DMA_MODE, "SCR": OMAP_UART_SCR_DMA_BITS}
    #: Reads at 0x08 are IIR (or EFR): they pass through untouched.
    unmasked_reads = frozenset({"FCR"})
    # LCR 8N1 (DLAB off, so 0x04 is IER and 0x08 is FCR), IER = 0, MCR = 0, FCR = 0x07
    # (FIFOs on and flushed, DMA mode off - FCR is write-only, so the masked-bit clean-up
    # cannot reach it and the sequence must), then MDR1 = 7 (UART disabled).
    reset_sequence = (
        RegisterWrite(0, _UART_LCR, 4, 0x03),
        RegisterWrite(0, _UART_IER, 4, 0),
        RegisterWrite(0, _UART_MCR, 4, 0),
        RegisterWrite(0, _UART_FCR, 4, 0x07),
        RegisterWrite(0, _UART_MDR1, 4, _MDR1_DISABLE),
    )

    def trap_write(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                   size: int, value: int) -> None:
        """FCR writes lose DMA_MODE unless LCR selects EFR at that offset."""
        if trap.name == "FCR" and regs.read(region, _UART_LCR, 4) & 0xFF == _LCR_CONF_MODE_B:
            regs.write(region, offset, size, value)
            return
        super().trap_write(regs, trap, region, offset, size, value)


#: I2C_BUF bits enabling DMA requests: RDMA_EN (15), XDMA_EN (7).
OMAP_I2C_BUF_DMA_BITS = (1 << 15) | (1 << 7)


# Evidence: drivers/i2c/busses/i2c-omap.c: 16-bit registers with CPU-served FIFO (reg_map_ip_v2);
# the IP's DMA request enables (I2C_BUF RDMA_EN/XDMA_EN, DMARX/DMATXENABLE_SET/CLR) are unused
# by Linux and only drive slave requests. Binding
# Documentation/devicetree/bindings/i2c/ti,omap4-i2c.yaml.
class OmapI2c(MaskedRegisterDriver):
    """TI OMAP4-and-later I2C (IP v2 register map; AM64/AM65/J7 fall back to it)."""

    name = "ti-omap4-i2c"
    compatibles = ("ti,omap4-i2c",)
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-omap.c (reg_map_ip_v2): CPU-served FIFO, DMA only as "
        "slave requests; binding Documentation/devicetree/bindings/i2c/ti,omap4-i2c.yaml"
    )
    dma_traps = (
        Trap(0, 0x38, 16, "DMA_ENABLE", "DMARX/DMATX ENABLE_SET/CLR: read as zero"),
        Trap(0, 0x94, 2, "BUF", "RDMA_EN/XDMA_EN masked: no DMA requests"),
    )
    masked_bits = {"BUF": OMAP_I2C_BUF_DMA_BITS}
    # IRQENABLE_CLR (0x30) all ones: every interrupt disabled; DMARXENABLE_CLR (0x40) and
    # DMATXENABLE_CLR (0x44) = 1: DMA requests the host may have left on are dropped;
    # CON (0xa4) = 0: I2C_EN off.
    reset_sequence = (
        RegisterWrite(0, 0x30, 2, 0x7FFF),
        RegisterWrite(0, 0x40, 2, 1),
        RegisterWrite(0, 0x44, 2, 1),
        RegisterWrite(0, 0xA4, 2, 0),
    )


# Evidence: drivers/gpio/gpio-davinci.c: per bank-pair DIR/OUT/SET/CLR/IN and trigger
# registers, BINTEN bank interrupt enable; binding
# Documentation/devicetree/bindings/gpio/gpio-davinci.yaml.
class DavinciGpio(PlatformDriver):
    """TI DaVinci/Keystone/K3 GPIO controller."""

    name = "ti-davinci-gpio"
    compatibles = ("ti,dm6441-gpio", "ti,keystone-gpio", "ti,am654-gpio")
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-davinci.c: data, direction and edge-trigger registers only; "
        "binding Documentation/devicetree/bindings/gpio/gpio-davinci.yaml"
    )
    # BINTEN (0x08) = 0: no bank raises an interrupt.
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


# Evidence: drivers/watchdog/rti_wdt.c: RTI counter/compare/windowed-watchdog registers;
# binding Documentation/devicetree/bindings/watchdog/ti,rti-wdt.yaml.
class RtiWdt(PlatformDriver):
    """TI K3 RTI windowed watchdog.

    No reset sequence: once RTIDWDCTRL enables the digital watchdog it cannot be disabled
    until the next reset (rti_wdt.c has no stop operation and reports a running watchdog to
    the framework instead).
    """

    name = "ti-j7-rti-wdt"
    compatibles = ("ti,j7-rti-wdt",)
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/rti_wdt.c: counter, preload and key registers only; binding "
        "Documentation/devicetree/bindings/watchdog/ti,rti-wdt.yaml"
    )
    unstoppable = ("RTIDWDCTRL cannot disable the digital watchdog until the next reset "
                   "(rti_wdt.c has no stop)")


# Evidence: drivers/pwm/pwm-tiehrpwm.c: 16-bit time-base, compare and action-qualifier
# registers; binding Documentation/devicetree/bindings/pwm/pwm-tiehrpwm.yaml.
class EhrPwm(PlatformDriver):
    """TI enhanced high-resolution PWM (ePWM) module."""

    name = "ti-ehrpwm"
    compatibles = ("ti,am3352-ehrpwm", "ti,am654-ehrpwm")
    family = "pwm"
    evidence = (
        "Linux drivers/pwm/pwm-tiehrpwm.c: time-base, counter-compare and action-qualifier "
        "registers only; binding Documentation/devicetree/bindings/pwm/pwm-tiehrpwm.yaml"
    )
    # AQCSFRC (0x1c) = 0x5: both outputs continuously forced low; ETSEL (0x32) = 0: event
    # trigger interrupt off.
    reset_sequence = (
        RegisterWrite(0, 0x1C, 2, 0x0005),
        RegisterWrite(0, 0x32, 2, 0),
    )


#: OMAP4-and-later McSPI registers sit 0x100 above the node's base (OMAP4_MCSPI_REG_OFFSET).
_MCSPI_BASE = 0x100
_MCSPI_CHANNELS = 4
#: MCSPI_CHxCONF DMAW (14) and DMAR (15): per-channel DMA request enables.
MCSPI_CHCONF_DMA_BITS = (1 << 14) | (1 << 15)


def _mcspi_chconf(channel: int) -> int:
    """Offset of MCSPI_CHxCONF (each channel has a 0x14-byte bank: CONF, STAT, CTRL, TX, RX)."""
    return _MCSPI_BASE + 0x2C + 0x14 * channel


# Evidence: drivers/spi/spi-omap2-mcspi.c: per-channel CHCONF/CHSTAT/CHCTRL/TX/RX registers;
# DMA through external slave channels (``dmas``) requested when CHCONF DMAW/DMAR are set.
# Binding Documentation/devicetree/bindings/spi/omap-spi.yaml.
class OmapMcspi(MaskedRegisterDriver):
    """TI OMAP4-and-later multichannel SPI (AM64/AM65/J7 fall back to ``ti,omap4-mcspi``)."""

    name = "ti-omap4-mcspi"
    compatibles = ("ti,omap4-mcspi",)
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-omap2-mcspi.c: PIO TX/RX registers per channel, DMA only as "
        "slave requests enabled by CHCONF DMAW/DMAR; binding "
        "Documentation/devicetree/bindings/spi/omap-spi.yaml"
    )
    dma_traps = tuple(
        Trap(0, _mcspi_chconf(ch), 4, f"CH{ch}CONF", "DMAW/DMAR masked: no DMA requests")
        for ch in range(_MCSPI_CHANNELS)
    )
    masked_bits = {f"CH{ch}CONF": MCSPI_CHCONF_DMA_BITS for ch in range(_MCSPI_CHANNELS)}
    # IRQENABLE (0x11c) = 0: interrupts off; every CHxCTRL (CHxCONF + 8) = 0: channels off.
    reset_sequence = (
        RegisterWrite(0, _MCSPI_BASE + 0x1C, 4, 0),
        *(RegisterWrite(0, _mcspi_chconf(ch) + 8, 4, 0) for ch in range(_MCSPI_CHANNELS)),
    )


DRIVERS = (OmapUart, OmapI2c, DavinciGpio, RtiWdt, EhrPwm, OmapMcspi)
