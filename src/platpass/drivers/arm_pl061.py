"""ARM PrimeCell GPIO (PL061): register-level driver.

The PL061 (ARM DDI 0190) is eight pins, their direction and interrupt sense behind an APB
slave port; no DMA of any kind. One register is the board's rather than the device user's:
``GPIOAFSEL`` hands pins to other peripherals' hardware control, i.e. pin routing that the
host firmware set up. It is trapped read-through/write-ignored, so a guest can see but not
take pins away from (or give pins to) the host's other devices. Linux's gpio-pl061 never
writes it.
"""

from __future__ import annotations

from enum import IntEnum

from platpass.drivers.arm_primecell import PrimeCellDriver
from platpass.drivers.common import RegisterAccess, RegisterWrite, Trap


class Reg(IntEnum):
    """PL061 register offsets (DDI 0190); ``DATA_ALL`` is GPIODATA with all 8 pins
    selected by masked addressing."""

    DATA_ALL = 0x3FC
    DIR = 0x400
    IS = 0x404
    IBE = 0x408
    IEV = 0x40C
    IE = 0x410
    RIS = 0x414
    MIS = 0x418
    IC = 0x41C
    AFSEL = 0x420


class ArmPl061(PrimeCellDriver):
    """PL061 GPIO described as a platform device (``arm,pl061``)."""

    name = "arm-pl061"
    compatibles = ("arm,pl061",)
    family = "gpio"
    evidence = (
        "Linux drivers/gpio/gpio-pl061.c: pins, direction and interrupt registers accessed "
        "by the CPU only; the PL061 TRM (ARM DDI 0190) shows an APB slave interface and no "
        "DMA; binding Documentation/devicetree/bindings/gpio/pl061-gpio.yaml"
    )
    traps = (
        Trap(0, Reg.AFSEL, 4, "GPIOAFSEL",
             "pin routing to other peripherals is board configuration: reads through, "
             "writes ignored"),
    )
    # Interrupts off first, so the steps below cannot raise one; pins back to inputs (no
    # pad driven), sense registers and output latch to reset values, latched edges cleared
    # last (a direction change can itself latch an edge).
    reset_sequence = (
        RegisterWrite(0, Reg.IE, 1, 0x00),
        RegisterWrite(0, Reg.DIR, 1, 0x00),
        RegisterWrite(0, Reg.IS, 1, 0x00),
        RegisterWrite(0, Reg.IBE, 1, 0x00),
        RegisterWrite(0, Reg.IEV, 1, 0x00),
        RegisterWrite(0, Reg.DATA_ALL, 1, 0x00),
        RegisterWrite(0, Reg.IC, 1, 0xFF),
    )

    def trap_read(self, regs: RegisterAccess, trap: Trap, region: int, offset: int,
                  size: int) -> int:
        """``GPIOAFSEL`` reads the real value."""
        return regs.read(region, offset, size)


DRIVERS = (ArmPl061,)
