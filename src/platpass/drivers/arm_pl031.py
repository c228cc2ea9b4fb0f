"""ARM PrimeCell Real Time Clock (PL031): register-level driver.

The PL031 (ARM DDI 0224) is a counter, a match register and an interrupt behind an APB
slave port; it has no DMA interface at all. Nothing needs trapping.
"""

from __future__ import annotations

from enum import IntEnum

from platpass.drivers.arm_primecell import PrimeCellDriver
from platpass.drivers.common import RegisterWrite


class Reg(IntEnum):
    """PL031 register offsets (DDI 0224)."""

    DR = 0x000
    MR = 0x004
    LR = 0x008
    CR = 0x00C
    IMSC = 0x010
    RIS = 0x014
    MIS = 0x018
    ICR = 0x01C


class ArmPl031(PrimeCellDriver):
    """PL031 RTC described as a platform device (``arm,pl031``).

    Reset turns the match interrupt off and clears it, and forgets the previous guest's
    alarm (``RTCMR`` = 0). It leaves the counter alone: the time is the board's, like a
    battery-backed clock, and ``RTCCR`` cannot stop a started counter anyway.
    """

    name = "arm-pl031"
    compatibles = ("arm,pl031",)
    family = "rtc"
    evidence = (
        "Linux drivers/rtc/rtc-pl031.c only reads/writes RTCDR/RTCMR/RTCLR/RTCCR and the "
        "interrupt registers; the PL031 TRM (ARM DDI 0224) shows an APB slave interface "
        "and no DMA; binding Documentation/devicetree/bindings/rtc/arm,pl031.yaml"
    )
    reset_sequence = (
        RegisterWrite(0, Reg.IMSC, 4, 0),
        RegisterWrite(0, Reg.ICR, 4, 1),
        RegisterWrite(0, Reg.MR, 4, 0),
    )


DRIVERS = (ArmPl031,)
