"""ARM PrimeCell UART (PL011): register-level driver.

The PL011 (ARM DDI 0183) has an APB slave interface and nothing else. Its only link to DMA
is the handshake with an *external* DMA controller (``UARTTXDMASREQ``/``UARTRXDMASREQ``
...), switched on by ``UARTDMACR``. That register is trapped on every node, ``dmas`` or
not: it reads as zero and ignores writes, so a guest can never make the UART raise DMA
requests at whatever DMA engine the board wires it to.
"""

from __future__ import annotations

from enum import IntEnum

from platpass.drivers.arm_primecell import PrimeCellDriver
from platpass.drivers.common import RegisterAccess, Trap


class Reg(IntEnum):
    """PL011 register offsets (DDI 0183)."""

    DR = 0x000
    RSR_ECR = 0x004
    FR = 0x018
    ILPR = 0x020
    IBRD = 0x024
    FBRD = 0x028
    LCR_H = 0x02C
    CR = 0x030
    IFLS = 0x034
    IMSC = 0x038
    ICR = 0x044
    DMACR = 0x048


FR_RXFE = 1 << 4
ALL_INTERRUPTS = 0x7FF
#: Reset values from the TRM: CR has TXE and RXE set, IFLS selects 1/2 for both FIFOs.
CR_RESET = 0x0300
IFLS_RESET = 0x12
#: More reads than the deepest RX FIFO (32) holds; bounds the drain on a device that
#: never reports empty (unclocked, or still receiving).
MAX_DRAIN = 64


class ArmPl011(PrimeCellDriver):
    """PL011 UART described as a platform device (``arm,pl011``)."""

    name = "arm-pl011"
    compatibles = ("arm,pl011",)
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/amba-pl011.c moves data by PIO through UARTDR, or through "
        "an external dmaengine slave channel (the 'dmas' binding) paced by the UARTDMACR "
        "TXDMAE/RXDMAE handshake; the PL011 TRM (ARM DDI 0183) shows an APB slave interface "
        "only; binding Documentation/devicetree/bindings/serial/arm,pl011.yaml"
    )
    traps = (
        Trap(0, Reg.DMACR, 4, "UARTDMACR",
             "DMA request enables (TXDMAE/RXDMAE/DMAONERR): reads as zero, writes ignored"),
    )

    def reset(self, regs: RegisterAccess) -> None:
        """Quiesce: interrupts masked and cleared, UART disabled, FIFOs emptied, DMA
        requests off, every register at its reset value (no state for the next guest).

        RX - the part a next guest could read - is drained by reading ``UARTDR`` until
        ``UARTFR.RXFE`` (bounded, for a device that never reports empty). TX has no flush
        register: clearing ``UARTLCR_H.FEN`` (as Linux's pl011_shutdown does) empties it in
        the simulated model and in QEMU's; on silicon where it does not, bytes still queued
        go out on the wire when the UART is next enabled - never to a guest.
        """
        regs.write(0, Reg.IMSC, 4, 0)
        regs.write(0, Reg.CR, 4, 0)
        regs.write(0, Reg.LCR_H, 4, 0)
        for _ in range(MAX_DRAIN):
            if regs.read(0, Reg.FR, 4) & FR_RXFE:
                break
            regs.read(0, Reg.DR, 4)
        regs.write(0, Reg.DMACR, 4, 0)
        regs.write(0, Reg.RSR_ECR, 4, 0)
        regs.write(0, Reg.ICR, 4, ALL_INTERRUPTS)
        regs.write(0, Reg.IFLS, 4, IFLS_RESET)
        regs.write(0, Reg.ILPR, 4, 0)
        regs.write(0, Reg.IBRD, 4, 0)
        regs.write(0, Reg.FBRD, 4, 0)
        regs.write(0, Reg.CR, 4, CR_RESET)


DRIVERS = (ArmPl011,)
