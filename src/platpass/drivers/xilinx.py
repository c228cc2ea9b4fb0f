"""Xilinx Zynq UltraScale+ (and Cadence IP used there): GPIO, UART, RTC, I2C, SPI."""

from __future__ import annotations

from platpass.drivers.common import PlatformDriver, RegisterWrite

#: ZynqMP GPIO: six banks, INT_DIS of bank n at 0x214 + 0x40 * n.
_ZYNQMP_GPIO_BANKS = 6


# Evidence: drivers/gpio/gpio-zynq.c: per-bank DATA/DIRM/OEN and INT_MASK/EN/DIS/STAT/TYPE
# registers; binding Documentation/devicetree/bindings/gpio/gpio-zynq.yaml.
class ZynqmpGpio(PlatformDriver):
    """ZynqMP PS GPIO controller (MIO and EMIO banks)."""

    name = "xlnx-zynqmp-gpio"
    compatibles = ("xlnx,zynqmp-gpio-1.0",)
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-zynq.c: data, direction and interrupt registers per bank, "
        "no DMA; binding Documentation/devicetree/bindings/gpio/gpio-zynq.yaml"
    )
    # INT_DIS of every bank: all ones (write-1-to-disable).
    reset_sequence = tuple(
        RegisterWrite(0, 0x214 + 0x40 * bank, 4, 0xFFFFFFFF) for bank in range(_ZYNQMP_GPIO_BANKS)
    )


# Evidence: drivers/tty/serial/xilinx_uartps.c: CR/MR/IER/IDR/IMR/ISR/FIFO registers, the CPU
# moves every byte; binding Documentation/devicetree/bindings/serial/cdns,uart.yaml.
class CadenceUart(PlatformDriver):
    """Cadence UART (Zynq-7000 and ZynqMP PS UART)."""

    name = "cdns-uart"
    compatibles = ("cdns,uart-r1p8", "cdns,uart-r1p12", "xlnx,xuartps", "xlnx,zynqmp-uart")
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/xilinx_uartps.c: register FIFO moved by the CPU, no DMA; "
        "binding Documentation/devicetree/bindings/serial/cdns,uart.yaml"
    )
    # IDR (0x0c) all ones: every interrupt disabled; CR (0x00) = TX_DIS | RX_DIS (0x28).
    reset_sequence = (
        RegisterWrite(0, 0x0C, 4, 0x00003FFF),
        RegisterWrite(0, 0x00, 4, 0x00000028),
    )


# Evidence: drivers/rtc/rtc-zynqmp.c: SET_TIME/CALIB/CUR_TIME/ALRM/INT_* registers; binding
# Documentation/devicetree/bindings/rtc/xlnx,zynqmp-rtc.yaml.
class ZynqmpRtc(PlatformDriver):
    """ZynqMP RTC (battery-backed counter with alarm)."""

    name = "xlnx-zynqmp-rtc"
    compatibles = ("xlnx,zynqmp-rtc",)
    family = "rtc"
    evidence = (
        "Linux drivers/rtc/rtc-zynqmp.c: time, calibration, alarm and interrupt registers "
        "only; binding Documentation/devicetree/bindings/rtc/xlnx,zynqmp-rtc.yaml"
    )
    # INT_DIS (0x2c) = SECS | ALRM: both interrupts disabled.
    reset_sequence = (RegisterWrite(0, 0x2C, 4, 0x3),)


# Evidence: drivers/i2c/busses/i2c-cadence.c: CR/SR/ADDR/DATA/ISR/XFER_SIZE/IMR/IER/IDR
# registers with a 16-byte FIFO served by the CPU; binding
# Documentation/devicetree/bindings/i2c/cdns,i2c-r1p10.yaml.
class CadenceI2c(PlatformDriver):
    """Cadence I2C controller (Zynq, ZynqMP)."""

    name = "cdns-i2c"
    compatibles = ("cdns,i2c-r1p10", "cdns,i2c-r1p14")
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-cadence.c: CPU-served FIFO, no DMA; binding "
        "Documentation/devicetree/bindings/i2c/cdns,i2c-r1p10.yaml"
    )
    # IDR (0x28) all defined bits: every interrupt disabled.
    reset_sequence = (RegisterWrite(0, 0x28, 4, 0x2FF),)


# Evidence: drivers/spi/spi-cadence.c: CR/ISR/IER/IDR/IMR/ER/TXD/RXD registers, PIO only;
# binding Documentation/devicetree/bindings/spi/spi-cadence.yaml.
class CadenceSpi(PlatformDriver):
    """Cadence SPI controller (Zynq, ZynqMP)."""

    name = "cdns-spi"
    compatibles = ("cdns,spi-r1p6", "xlnx,zynq-spi-r1p6")
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-cadence.c: PIO FIFO registers only, no DMA; binding "
        "Documentation/devicetree/bindings/spi/spi-cadence.yaml"
    )
    # IDR (0x0c) all defined bits: interrupts off; ER (0x14) = 0: controller disabled.
    reset_sequence = (
        RegisterWrite(0, 0x0C, 4, 0x7F),
        RegisterWrite(0, 0x14, 4, 0),
    )


#: ZMR writes must carry the access key 0xABC in bits 12-23 (cadence_wdt.c).
_CDNS_WDT_ZMR_KEY = 0x00ABC000


# Evidence: drivers/watchdog/cadence_wdt.c: ZMR/CCR/RESTART/SR registers; binding
# Documentation/devicetree/bindings/watchdog/cdns,wdt-r1p2.yaml.
class CadenceWdt(PlatformDriver):
    """Cadence watchdog (ZynqMP FPD/LPD SWDT)."""

    name = "cdns-wdt"
    compatibles = ("cdns,wdt-r1p2",)
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/cadence_wdt.c: zero-mode, counter-control and restart "
        "registers only; binding Documentation/devicetree/bindings/watchdog/cdns,wdt-r1p2.yaml"
    )
    # ZMR (0x0) = key with WDEN clear: stopped, exactly as cdns_wdt_stop writes it.
    reset_sequence = (RegisterWrite(0, 0x0, 4, _CDNS_WDT_ZMR_KEY),)


DRIVERS = (ZynqmpGpio, CadenceUart, ZynqmpRtc, CadenceI2c, CadenceSpi, CadenceWdt)
