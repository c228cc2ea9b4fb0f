"""Qualcomm GENI serial engines: declared so that they are always refused.

Each GENI serial engine (SE) in a QUP wrapper has its own DMA engine: the SE DMA registers
(``SE_DMA_TX_PTR_L/H``, ``SE_DMA_RX_PTR_L/H``...) take a bus address and the SE fetches and
stores the data itself (``geni_se_tx_dma_prep``/``geni_se_rx_dma_prep`` in
``drivers/soc/qcom/qcom-geni-se.c``; the wrapper node carries ``iommus`` for exactly that).
A GENI UART, I2C or SPI controller is therefore a bus master, whatever its node says. These
declarations have ``cannot_master_bus = False``: matching them gives REFUSED_BUS_MASTER with
this evidence, instead of the weaker REFUSED_UNKNOWN.
"""

from __future__ import annotations

from platpass.drivers.common import PlatformDriver

_EVIDENCE = (
    "Linux drivers/soc/qcom/qcom-geni-se.c (geni_se_tx_dma_prep/geni_se_rx_dma_prep program "
    "the SE's own DMA engine with a bus address): a GENI serial engine masters the bus; "
    "binding Documentation/devicetree/bindings/soc/qcom/qcom,geni-se.yaml"
)


# Evidence: drivers/soc/qcom/qcom-geni-se.c: the wrapper hosts the SEs and their DMA.
class GeniSeQup(PlatformDriver):
    """QUP wrapper holding GENI serial engines (and their shared stream ID)."""

    name = "qcom-geni-se-qup"
    compatibles = ("qcom,geni-se-qup",)
    family = "serial-engine"
    cannot_master_bus = False
    evidence = _EVIDENCE


# Evidence: drivers/tty/serial/qcom_geni_serial.c on top of qcom-geni-se.c SE DMA.
class GeniUart(PlatformDriver):
    """GENI UART (console and high-speed): a bus master through its SE DMA."""

    name = "qcom-geni-uart"
    compatibles = ("qcom,geni-uart", "qcom,geni-debug-uart")
    family = "uart"
    cannot_master_bus = False
    evidence = _EVIDENCE + "; drivers/tty/serial/qcom_geni_serial.c"


# Evidence: drivers/i2c/busses/i2c-qcom-geni.c uses geni_se_tx_dma_prep for transfers.
class GeniI2c(PlatformDriver):
    """GENI I2C: a bus master through its SE DMA."""

    name = "qcom-geni-i2c"
    compatibles = ("qcom,geni-i2c",)
    family = "i2c"
    cannot_master_bus = False
    evidence = _EVIDENCE + "; drivers/i2c/busses/i2c-qcom-geni.c"


# Evidence: drivers/spi/spi-geni-qcom.c uses geni_se_tx_dma_prep for transfers.
class GeniSpi(PlatformDriver):
    """GENI SPI: a bus master through its SE DMA."""

    name = "qcom-geni-spi"
    compatibles = ("qcom,geni-spi",)
    family = "spi"
    cannot_master_bus = False
    evidence = _EVIDENCE + "; drivers/spi/spi-geni-qcom.c"


DRIVERS = (GeniSeQup, GeniUart, GeniI2c, GeniSpi)
