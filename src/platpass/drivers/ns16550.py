"""16550-compatible UARTs (``ns16550a``, ``ns16550``, ``ns8250``, ``fsl,ns16550``).

A 16550 is eight byte registers behind a slave port. Its DMA support is two handshake pins
(``TXRDY``/``RXRDY``) for an external DMA controller; ``FCR`` bit 3 ("DMA mode") only
switches them between signalling modes 0 and 1 - in both modes they follow the FIFOs. So
no register can turn DMA requests on or off, and nothing is trapped: FCR bit 3 is harmless.
On a node with ``dmas`` the requests are neutralised where they would act, at the host's
DMA controller, which never has a channel programmed for an assigned device (and the guest
node loses ``dmas``). This matches the DesignWare 8250 driver's reasoning
(:mod:`platpass.drivers.snps_dw`).

The register layout comes from the node: ``reg-shift`` (stride ``1 << reg-shift``) and
``reg-io-width`` (access size), as Linux's 8250_of reads them.
"""

from __future__ import annotations

from enum import IntEnum

from platpass.drivers.common import PlatformDriver, RegisterAccess
from platpass.errors import DriverError
from platpass.firmware.model import DeviceNode


class Reg(IntEnum):
    """Register indexes (offset = index << reg-shift)."""

    RBR_THR = 0
    IER = 1
    IIR_FCR = 2
    LCR = 3
    MCR = 4
    LSR = 5
    MSR = 6
    SCR = 7


LSR_DR = 1 << 0
FCR_ENABLE_CLEAR_BOTH = 0x07
#: More reads than any 16550-family RX FIFO holds (16; 64 on the 16750).
MAX_DRAIN = 128


def _cell(node: DeviceNode, name: str, default: int) -> int:
    raw = node.properties.get(name)
    if raw is None:
        return default
    if len(raw) != 4:
        raise DriverError(f"{node.path}: {name} is {len(raw)} bytes, not one cell")
    return int.from_bytes(raw, "big")


class Ns16550(PlatformDriver):
    """The 16550 family's register-level driver."""

    name = "ns16550"
    compatibles = ("ns16550a", "ns16550", "ns8250", "fsl,ns16550")
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/8250/8250_of.c and 8250_port.c drive the 16550 register "
        "file by PIO; DMA (8250_dma.c) is only a dmaengine slave channel of an external "
        "controller paced by the TXRDY/RXRDY handshake; binding "
        "Documentation/devicetree/bindings/serial/8250.yaml"
    )

    def __init__(self, node: DeviceNode) -> None:
        super().__init__(node)
        shift = _cell(node, "reg-shift", 0)
        width = _cell(node, "reg-io-width", 1)
        if width not in (1, 2, 4) or shift > 4 or width > (1 << shift):
            raise DriverError(f"{node.path}: unsupported reg-shift {shift} / "
                              f"reg-io-width {width}")
        self.reg_shift = shift
        self.io_width = width

    def offset(self, reg: Reg) -> int:
        """Byte offset of ``reg`` on this node."""
        return int(reg) << self.reg_shift

    def reset(self, regs: RegisterAccess) -> None:
        """Quiesce: interrupts off, DLAB off, both FIFOs cleared and the receiver drained,
        modem outputs and scratch cleared, then pending line/modem/THRE status read away."""
        width = self.io_width

        def write(reg: Reg, value: int) -> None:
            regs.write(0, self.offset(reg), width, value)

        def read(reg: Reg) -> int:
            return regs.read(0, self.offset(reg), width) & 0xFF

        write(Reg.LCR, 0x00)                     # DLAB off: offsets 0/1 are RBR/IER again
        write(Reg.IER, 0x00)
        write(Reg.IIR_FCR, FCR_ENABLE_CLEAR_BOTH)
        for _ in range(MAX_DRAIN):               # an 8250 has no FIFO to clear
            if not read(Reg.LSR) & LSR_DR:
                break
            read(Reg.RBR_THR)
        write(Reg.IIR_FCR, 0x00)
        write(Reg.MCR, 0x00)
        write(Reg.SCR, 0x00)
        read(Reg.LSR)                            # clears OE/PE/FE/BI
        read(Reg.MSR)                            # clears the delta bits
        read(Reg.IIR_FCR)                        # clears a pending THRE
        read(Reg.RBR_THR)


DRIVERS = (Ns16550,)
