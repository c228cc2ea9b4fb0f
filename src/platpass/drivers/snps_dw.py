"""Synopsys DesignWare APB peripherals: the 8250-style UART, the I2C master and the watchdog.

These DesignWare blocks sit behind an APB slave port and nothing else; where a SoC wires
their DMA handshake lines, the transfers are done by a separate DMA controller that stays
with the host (the guest node loses ``dmas``).
"""

from __future__ import annotations

from platpass.drivers.common import (
    PlatformDriver,
    RegisterAccess,
    RegisterWrite,
    Trap,
    register_io_width,
)
from platpass.firmware.model import DeviceNode

# 16550 register file, 32-bit spaced (reg-shift = 2, reg-io-width = 4).
_LCR = 0x0C
_IER = 0x04
_MCR = 0x10
#: LCR value: 8N1, DLAB clear (so that offset 0x04 is IER, not DLH).
_LCR_8N1 = 0x03


# Evidence: drivers/tty/serial/8250/8250_dw.c drives a 16550 register file; its only DMA is
# the dmaengine slave channel named by ``dmas`` (handshake lines to an external DMAC);
# Documentation/devicetree/bindings/serial/snps-dw-apb-uart.yaml has no bus-master property.
class DwApbUart(PlatformDriver):
    """DesignWare APB UART (``snps,dw-apb-uart``) and SoC UARTs that fall back to it.

    No DMA trap: the DW UART has no register that enables DMA requests. Its
    ``dma_tx_req``/``dma_rx_req`` handshake lines follow the FIFO levels whatever the guest
    writes (FCR bit 3 only chooses handshake mode 0 or 1), and only a host DMA controller
    channel programmed for those lines could act on them; the host never programs one for an
    assigned device.
    """

    name = "snps-dw-apb-uart"
    compatibles = ("snps,dw-apb-uart",)
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/8250/8250_dw.c: 16550-compatible APB slave; DMA only as a "
        "dmaengine slave through an external controller (dmas); binding "
        "Documentation/devicetree/bindings/serial/snps-dw-apb-uart.yaml"
    )
    # LCR first (DLAB off), then every interrupt source off and OUT2/RTS/DTR dropped.
    # On a DW UART configured without UART_16550_COMPATIBLE an LCR write while busy is
    # ignored; IER is then still reached because DLAB was clear in any sane prior state.
    reset_sequence = (
        RegisterWrite(0, _LCR, 4, _LCR_8N1),
        RegisterWrite(0, _IER, 4, 0),
        RegisterWrite(0, _MCR, 4, 0),
    )

    def reset(self, regs: RegisterAccess) -> None:
        """The sequence above, each write as wide as the node's ``reg-io-width`` says
        (Armada 7k/8k boards ask for byte accesses)."""
        width = register_io_width(self.node, 4)
        for step in self.reset_sequence:
            regs.write(step.region, step.offset, width, step.value)


# Evidence: drivers/i2c/busses/i2c-designware-platdrv.c / i2c-designware-master.c: a register
# interface with TX/RX FIFOs served by the CPU; IC_DMA_CR only raises handshake requests for
# an external DMAC. Binding: Documentation/devicetree/bindings/i2c/snps,designware-i2c.yaml.
class DwApbI2c(PlatformDriver):
    """DesignWare APB I2C controller."""

    name = "snps-designware-i2c"
    compatibles = ("snps,designware-i2c",)
    family = "i2c"
    evidence = (
        "Linux drivers/i2c/busses/i2c-designware-platdrv.c and i2c-designware-master.c: "
        "APB slave with CPU-served FIFOs, DMA only as handshake requests (IC_DMA_CR) to an "
        "external controller; binding "
        "Documentation/devicetree/bindings/i2c/snps,designware-i2c.yaml"
    )
    # IC_DMA_CR (0x88): TDMAE bit 1, RDMAE bit 0 - nothing else lives in it.
    dma_traps = (
        Trap(0, 0x88, 4, "IC_DMA_CR", "DMA handshake enables (TDMAE/RDMAE): read as zero"),
    )
    # IC_INTR_MASK (0x30) = 0: every interrupt masked; IC_ENABLE (0x6c) = 0: controller off;
    # IC_DMA_CR (0x88) = 0: handshakes the host may have left on are dropped.
    reset_sequence = (
        RegisterWrite(0, 0x30, 4, 0),
        RegisterWrite(0, 0x6C, 4, 0),
        RegisterWrite(0, 0x88, 4, 0),
    )


# Evidence: drivers/watchdog/dw_wdt.c: a counter with control, torr and restart registers;
# Documentation/devicetree/bindings/watchdog/snps,dw-wdt.yaml - no DMA of any kind.
class DwWdt(PlatformDriver):
    """DesignWare APB watchdog (``snps,dw-wdt``; Rockchip watchdogs fall back to it).

    No reset sequence: WDT_CR.WDT_EN cannot be cleared by software once set (dw_wdt.c has no
    stop and relies on the framework's keep-alive), so a running watchdog can only be handed
    to the guest still running; the guest's driver finds it enabled and keeps feeding it.
    """

    name = "snps-dw-wdt"
    compatibles = ("snps,dw-wdt",)
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/dw_wdt.c: APB slave counter (WDT_CR, WDT_TORR, WDT_CRR); "
        "binding Documentation/devicetree/bindings/watchdog/snps,dw-wdt.yaml"
    )
    unstoppable = ("WDT_CR.WDT_EN cannot be cleared by software and the node has no reset "
                   "line (dw_wdt_stop can only assert 'resets')")

    @classmethod
    def unstoppable_on(cls, node: DeviceNode) -> str:
        """Stoppable only through the node's reset line (dw_wdt_stop asserts it)."""
        return "" if "resets" in node.properties else cls.unstoppable


# Evidence: drivers/gpio/gpio-dwapb.c: port data/direction and INTEN/INTMASK/INTTYPE registers;
# binding Documentation/devicetree/bindings/gpio/snps,dw-apb-gpio.yaml.
class DwApbGpio(PlatformDriver):
    """DesignWare APB GPIO controller (ports are child nodes of this one)."""

    name = "snps-dw-apb-gpio"
    compatibles = ("snps,dw-apb-gpio",)
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-dwapb.c: data, direction and interrupt registers only; "
        "binding Documentation/devicetree/bindings/gpio/snps,dw-apb-gpio.yaml"
    )
    # INTEN (0x30) = 0: no port A line raises an interrupt.
    reset_sequence = (RegisterWrite(0, 0x30, 4, 0),)


DRIVERS = (DwApbUart, DwApbI2c, DwWdt, DwApbGpio)
