"""ARM Watchdog Module (SP805): register-level driver.

The SP805 (ARM DDI 0270) is a down-counter with an interrupt and a reset output behind an
APB slave port; no DMA. Its lock (``WdogLock``: 0x1ACCE551 unlocks, anything else locks)
is the device's own and is kept as it is: the guest's accesses reach it unchanged, and
reset unlocks, quiesces, then locks again, as Linux's sp805_wdt leaves it between accesses.

Assigning a watchdog hands the guest a reset output: on a board, ``WDOGRES`` usually
resets the SoC, host included. That is the device's purpose, so it is not trapped; the
user chooses to assign it.
"""

from __future__ import annotations

from enum import IntEnum

from platpass.drivers.arm_primecell import PrimeCellDriver
from platpass.drivers.common import RegisterWrite


class Reg(IntEnum):
    """SP805 register offsets (DDI 0270)."""

    LOAD = 0x000
    VALUE = 0x004
    CONTROL = 0x008
    INTCLR = 0x00C
    RIS = 0x010
    MIS = 0x014
    LOCK = 0xC00
    ITCR = 0xF00
    ITOP = 0xF04


UNLOCK_KEY = 0x1ACCE551
LOCK_KEY = 0
LOAD_RESET = 0xFFFF_FFFF


class ArmSp805(PrimeCellDriver):
    """SP805 watchdog (``arm,sp805``)."""

    name = "arm-sp805"
    compatibles = ("arm,sp805",)
    family = "watchdog"
    evidence = (
        "Linux drivers/watchdog/sp805_wdt.c: load, control, interrupt-clear and lock "
        "registers accessed by the CPU only; the SP805 TRM (ARM DDI 0270) shows an APB "
        "slave interface and no DMA; binding "
        "Documentation/devicetree/bindings/watchdog/arm,sp805.yaml"
    )
    # Unlock; stop the counter and both outputs (INTEN/RESEN clear); clear the interrupt;
    # load and test-mode registers to reset values; lock again.
    reset_sequence = (
        RegisterWrite(0, Reg.LOCK, 4, UNLOCK_KEY),
        RegisterWrite(0, Reg.CONTROL, 4, 0),
        RegisterWrite(0, Reg.INTCLR, 4, 1),
        RegisterWrite(0, Reg.LOAD, 4, LOAD_RESET),
        RegisterWrite(0, Reg.ITOP, 4, 0),
        RegisterWrite(0, Reg.ITCR, 4, 0),
        RegisterWrite(0, Reg.LOCK, 4, LOCK_KEY),
    )


DRIVERS = (ArmSp805,)
