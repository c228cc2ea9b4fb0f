"""The fast constructors build exactly what the dataclass constructors build."""

from __future__ import annotations

import dataclasses

import pytest

from platpass.firmware.builders import (
    new_clock,
    new_device_node,
    new_interrupt,
    new_mmio_range,
)
from platpass.firmware.model import Clock, DeviceNode, Interrupt, IrqType, MmioRange, Trigger


def test_builders_equal_constructors_and_stay_frozen() -> None:
    irq = new_interrupt("/gic", (0, 5, 4), IrqType.SPI, 5, Trigger.LEVEL_HIGH, "tx")
    assert irq == Interrupt("/gic", (0, 5, 4), IrqType.SPI, 5, Trigger.LEVEL_HIGH, "tx")
    assert hash(irq) == hash(Interrupt("/gic", (0, 5, 4), IrqType.SPI, 5,
                                       Trigger.LEVEL_HIGH, "tx"))
    clock = new_clock("/osc", (), "apb", 24_000_000)
    assert clock == Clock("/osc", (), "apb", 24_000_000)
    region = new_mmio_range(0x1000, 0x100, None)
    assert region == MmioRange(0x1000, 0x100) and region.end == 0x1100
    node = new_device_node("/u", ("arm,pl011",), "okay", True, (region,), (irq,), (clock,),
                           {"reg": b"\0"}, (), 3)
    assert node == DeviceNode("/u", ("arm,pl011",), "okay", True, (region,), (irq,),
                              (clock,), {"reg": b"\0"}, (), 3)
    assert repr(node) == repr(DeviceNode("/u", ("arm,pl011",), "okay", True, (region,),
                                         (irq,), (clock,), {"reg": b"\0"}, (), 3))
    for obj, field in ((irq, "number"), (clock, "rate"), (region, "size"), (node, "status")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, 0)
