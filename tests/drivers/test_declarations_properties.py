"""The safety invariant of every masked declaration, under random guest accesses.

For each driver built on :class:`~platpass.drivers.common.MaskedRegisterDriver` (whatever
module declares it), hypothesis drives arbitrary naturally aligned 1/2/4-byte guest writes
and reads at every active trap. Whatever the guest does:

* no masked (DMA-request) bit is ever set in the device's register;
* no read returns a masked bit (except registers whose reads belong to another register);
* a write-protected register never changes.

The register file is a bytearray standing in for the device (a test double of the hardware,
not of platpass).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.drivers.common import MaskedRegisterDriver, access_mask
from platpass.drivers.registry import default_registry
from platpass.firmware.model import DeviceNode

MASKED = [d for d in default_registry(plugins=False).drivers
          if issubclass(d, MaskedRegisterDriver)]


class Registers:
    """Little-endian register file over one bytearray per region."""

    def __init__(self, size: int) -> None:
        self.mem = [bytearray(size) for _ in range(4)]

    def read(self, region: int, offset: int, size: int) -> int:
        return int.from_bytes(self.mem[region][offset:offset + size], "little")

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        self.mem[region][offset:offset + size] = value.to_bytes(size, "little")


def _node(compatible: str, big_endian: bool) -> DeviceNode:
    props = {"compatible": compatible.encode() + b"\0", "dmas": b"\0\0\0\x01\0\0\0\x02"}
    if big_endian:
        props["big-endian"] = b""
    return DeviceNode(path="/soc/dev@0", compatible=(compatible,), status="okay",
                      is_mmio=True, properties=props)


def test_there_are_masked_declarations_to_check() -> None:
    assert len(MASKED) >= 10


accesses = st.lists(
    st.tuples(st.integers(0, 63), st.sampled_from([1, 2, 4]), st.integers(0, 2**32 - 1),
              st.integers(-3, 3)),
    min_size=1, max_size=30)


@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("driver_class", MASKED, ids=lambda d: d.name)
@settings(max_examples=25, deadline=None)
@given(accesses=accesses, background=st.binary(min_size=16, max_size=16))
def test_guest_never_sets_or_sees_a_masked_bit(driver_class, big_endian: bool,
                                                accesses, background: bytes) -> None:
    driver = driver_class(_node(driver_class.compatibles[0], big_endian))
    traps = driver.active_traps()
    masks = driver.masks()
    regs = Registers(0x1000)
    for region in range(4):
        regs.mem[region][:] = background * (0x1000 // len(background))
    # Start from a quiesced device, as the VFIO device does on open.
    driver.reset(regs)
    protected = {t.name: regs.read(t.region, t.offset, t.size)
                 for t in traps if t.name in driver.write_protected}
    for pick, size, value, shift in accesses:
        trap = traps[pick % len(traps)]
        offset = trap.offset + shift * size
        offset -= offset % size
        offset = max(offset, 0)
        if not trap.covers(trap.region, offset, size):
            continue
        value &= (1 << (8 * size)) - 1
        driver.trap_write(regs, trap, trap.region, offset, size, value)
        got = driver.trap_read(regs, trap, trap.region, offset, size)
        bits = masks.get(trap.name)
        if bits is not None and trap.name not in driver.unmasked_reads:
            assert got & access_mask(trap, offset, size, bits) == 0
    for trap in traps:
        bits = masks.get(trap.name)
        if bits is not None and not _write_only_escape(driver, trap.name, regs):
            assert regs.read(trap.region, trap.offset, trap.size) & bits == 0, trap.name
        if trap.name in protected:
            assert regs.read(trap.region, trap.offset, trap.size) == protected[trap.name]


def _write_only_escape(driver: MaskedRegisterDriver, name: str, regs: Registers) -> bool:
    """A 16550 FCR trap passes EFR writes (LCR = 0xBF on OMAP): the byte then holds EFR."""
    return name == "FCR" and driver.name == "ti-omap-uart" and regs.read(0, 0x0C, 1) == 0xBF
