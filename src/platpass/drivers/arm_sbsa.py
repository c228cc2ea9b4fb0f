"""Arm SBSA generic peripherals: the generic watchdog and the generic UART.

Both are defined by Arm's Server Base System Architecture as plain register frames; the SBSA
UART is a PL011 subset *without* the DMA control register.
"""

from __future__ import annotations

from platpass.drivers.common import PlatformDriver, RegisterWrite

#: Region indices of the watchdog as Linux's sbsa_gwdt.c maps them: reg[0] control frame,
#: reg[1] refresh frame.
CONTROL_FRAME = 0
REFRESH_FRAME = 1


# Evidence: drivers/watchdog/sbsa_gwdt.c maps two frames (control: WCS/WOR/WCV, refresh:
# WRR) and nothing else; Documentation/devicetree/bindings/watchdog/arm,sbsa-gwdt.yaml.
class SbsaGenericWatchdog(PlatformDriver):
    """SBSA generic watchdog: control frame (region 0) + refresh frame (region 1).

    Reset stops it: writing 0 to WCS clears WCS.EN (sbsa_gwdt_stop does exactly this). Writes
    to the refresh frame need no trap: a refresh only restarts the guest's own countdown.
    """

    name = "arm-sbsa-gwdt"
    compatibles = ("arm,sbsa-gwdt",)
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/sbsa_gwdt.c: control frame (WCS 0x0, WOR 0x8, WCV 0x10) and "
        "refresh frame (WRR 0x0), slave registers only; binding "
        "Documentation/devicetree/bindings/watchdog/arm,sbsa-gwdt.yaml; Arm DEN0029 (SBSA)"
    )
    reset_sequence = (RegisterWrite(CONTROL_FRAME, 0x000, 4, 0),)


# Evidence: drivers/tty/serial/amba-pl011.c registers the "sbsa-uart" platform driver with
# the vendor data that has no DMA support; the SBSA generic UART (Arm DEN0029, appendix B)
# omits UARTDMACR entirely. Binding: Documentation/devicetree/bindings/serial/arm,sbsa-uart.yaml.
class SbsaUart(PlatformDriver):
    """SBSA generic UART: a fixed-configuration PL011 subset (no LCR, CR, baud or DMACR)."""

    name = "arm-sbsa-uart"
    compatibles = ("arm,sbsa-uart",)
    family = "uart"
    evidence = (
        "Linux drivers/tty/serial/amba-pl011.c (sbsa_uart_probe, no DMA for SBSA); the SBSA "
        "generic UART has no UARTDMACR; binding "
        "Documentation/devicetree/bindings/serial/arm,sbsa-uart.yaml"
    )
    # UARTIMSC (0x38) = 0: all interrupts masked; UARTICR (0x44) = 0x7ff: clear all.
    reset_sequence = (
        RegisterWrite(0, 0x38, 4, 0),
        RegisterWrite(0, 0x44, 4, 0x7FF),
    )


DRIVERS = (SbsaGenericWatchdog, SbsaUart)
