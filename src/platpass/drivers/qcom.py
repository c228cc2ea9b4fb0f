"""Qualcomm BLSP peripherals (UARTDM, QUP I2C/SPI) and the APSS/KPSS watchdog.

The BLSP blocks reach memory only through the BAM, a separate DMA engine node
(``qcom,bam-v1.7.0``, with ``#dma-cells``) that stays with the host; the peripherals have
BAM/data-mover request modes, which are masked here. Contrast :mod:`.qcom_geni`, whose
serial engines carry their own DMA engine and are always refused.
"""

from __future__ import annotations

from platpass.drivers.common import MaskedRegisterDriver, PlatformDriver, RegisterWrite, Trap

#: UARTDM_DMEN bits that hand the FIFOs to a DMA engine: TX/RX data-mover (0, 1) and
#: TX/RX BAM (2, 3). Bits 4-5 (single-character mode) are data packing, not DMA.
UARTDM_DMEN_DMA_BITS = 0x0F


# Evidence: drivers/tty/serial/msm_serial.c: UARTDM registers with a TX/RX FIFO; DMA only
# through an ADM/BAM channel named by ``dmas``, switched on by UARTDM_DMEN. Binding
# Documentation/devicetree/bindings/serial/qcom,msm-uartdm.yaml.
class MsmUartdm(MaskedRegisterDriver):
    """Qualcomm UARTDM (v1.1-v1.4)."""

    name = "qcom-msm-uartdm"
    compatibles = ("qcom,msm-uartdm", "qcom,msm-uartdm-v1.1", "qcom,msm-uartdm-v1.2",
                   "qcom,msm-uartdm-v1.3", "qcom,msm-uartdm-v1.4")
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/msm_serial.c: FIFO registers served by the CPU or by an "
        "external ADM/BAM channel (dmas) enabled in UARTDM_DMEN; binding "
        "Documentation/devicetree/bindings/serial/qcom,msm-uartdm.yaml"
    )
    dma_traps = (Trap(0, 0x3C, 4, "UARTDM_DMEN", "DM/BAM enables masked: FIFO mode only"),)
    masked_bits = {"UARTDM_DMEN": UARTDM_DMEN_DMA_BITS}
    # IMR (0x14) = 0: every interrupt masked (the masked reset also clears DMEN's DMA bits).
    reset_sequence = (RegisterWrite(0, 0x14, 4, 0),)


#: QUP_IO_MODE bit 1 of the output (10-11) and input (12-13) mode fields: clearing it turns
#: DMOV (2) into FIFO (0) and BAM (3) into BLOCK (1), the two CPU-served modes.
QUP_IO_MODE_DMA_BITS = (1 << 11) | (1 << 13)


class _Qup(MaskedRegisterDriver):
    """Shared declaration of the QUP core (QUP_CONFIG, STATE, IO_MODE, SW_RESET...)."""

    dma_traps = (Trap(0, 0x008, 4, "QUP_IO_MODE", "BAM/DMOV modes masked to FIFO/BLOCK"),)
    masked_bits = {"QUP_IO_MODE": QUP_IO_MODE_DMA_BITS}
    # QUP_SW_RESET (0x00c) = 1: core reset - back to RESET state, FIFO mode, interrupts off.
    reset_sequence = (RegisterWrite(0, 0x00C, 4, 1),)


# Evidence: drivers/i2c/busses/i2c-qup.c: QUP core registers with CPU-served FIFO/BLOCK
# modes; the BAM mode uses dmaengine slave channels (``dmas`` "tx"/"rx"). Binding
# Documentation/devicetree/bindings/i2c/qcom,i2c-qup.yaml.
class QupI2c(_Qup):
    """Qualcomm BLSP QUP I2C controller."""

    name = "qcom-i2c-qup"
    compatibles = ("qcom,i2c-qup-v1.1.1", "qcom,i2c-qup-v2.1.1", "qcom,i2c-qup-v2.2.1")
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-qup.c: QUP FIFO/BLOCK modes served by the CPU, BAM mode "
        "only through external slave channels (dmas) selected in QUP_IO_MODE; binding "
        "Documentation/devicetree/bindings/i2c/qcom,i2c-qup.yaml"
    )


# Evidence: drivers/spi/spi-qup.c: the same QUP core (QUP_IO_M_MODES at 0x008); binding
# Documentation/devicetree/bindings/spi/qcom,spi-qup.yaml.
class QupSpi(_Qup):
    """Qualcomm BLSP QUP SPI controller."""

    name = "qcom-spi-qup"
    compatibles = ("qcom,spi-qup-v1.1.1", "qcom,spi-qup-v2.1.1", "qcom,spi-qup-v2.2.1")
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-qup.c: QUP FIFO/BLOCK modes served by the CPU, BAM/DMOV only "
        "through external slave channels (dmas) selected in QUP_IO_M_MODES; binding "
        "Documentation/devicetree/bindings/spi/qcom,spi-qup.yaml"
    )


# Evidence: drivers/watchdog/qcom-wdt.c (reg_offset_data_kpss: WDT_RST 0x04, WDT_EN 0x08,
# WDT_STS 0x0c, WDT_BARK_TIME 0x10, WDT_BITE_TIME 0x14); binding
# Documentation/devicetree/bindings/watchdog/qcom-wdt.yaml.
class KpssWdt(PlatformDriver):
    """Qualcomm APSS/KPSS watchdog (``qcom,apss-wdt-*`` nodes fall back to ``kpss-wdt``)."""

    name = "qcom-kpss-wdt"
    compatibles = ("qcom,kpss-wdt",)
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/qcom-wdt.c: reset, enable, status and bark/bite timer "
        "registers only; binding Documentation/devicetree/bindings/watchdog/qcom-wdt.yaml"
    )
    # WDT_EN (0x08) = 0: watchdog stopped (qcom_wdt_stop writes exactly this).
    reset_sequence = (RegisterWrite(0, 0x08, 4, 0),)


DRIVERS = (MsmUartdm, QupI2c, QupSpi, KpssWdt)
