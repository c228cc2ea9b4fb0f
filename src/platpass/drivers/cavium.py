"""Cavium Octeon / ThunderX: the MPI SPI master."""

from __future__ import annotations

from typing import ClassVar

from platpass.drivers.common import PlatformDriver, RegisterWrite

#: ``MPI_CFG``: its ``enable`` bit 0 and the chip-select enables; 0 stops the interface.
MPI_CFG = 0x00


# Evidence: drivers/spi/spi-cavium.c + spi-cavium-octeon.c (platform, registers at 0) and
# spi-cavium-thunderx.c (PCI, the same block at BAR0 + 0x1000): MPI_CFG, MPI_STS, MPI_TX and
# nine MPI_DAT byte registers, moved by the CPU and polled (MPI_STS busy); no DMA, and the
# interrupt is never enabled. Binding: Documentation/devicetree/bindings/spi/spi-octeon.txt.
class OcteonSpi(PlatformDriver):
    """Cavium MPI SPI master: a nine-byte shift buffer the CPU fills and drains."""

    name = "cavium-octeon-spi"
    compatibles = ("cavium,octeon-3010-spi",)
    family = "spi"
    evidence = (
        "Linux drivers/spi/spi-cavium.c (+ spi-cavium-octeon.c, spi-cavium-thunderx.c): "
        "config, status, transmit and nine data registers moved by the CPU, completion "
        "polled, no DMA; binding Documentation/devicetree/bindings/spi/spi-octeon.txt"
    )
    #: Every MPI register is a 64-bit CSR (the drivers use readq/writeq only).
    io_width: ClassVar[int] = 8
    # MPI_CFG = 0: interface disabled, chip selects released (what spi-thunderx's remove
    # writes to leave the block in a known state).
    reset_sequence = (RegisterWrite(0, MPI_CFG, 8, 0),)


DRIVERS = (OcteonSpi,)
