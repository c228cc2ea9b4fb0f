"""Property tests over the simulated backend: the memfd mirror never lies, the interrupt
contract holds for any sequence, and PL061 masked addressing matches a reference."""

from __future__ import annotations

import mmap
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock
from platpass.host.simulated.models import Ns16550, Pl011, Pl031, Pl061, Sp805
from platpass.host.simulated.models.pl061 import Reg as Gpio

FACTORIES = {
    "pl011": lambda clock: Pl011(clock),
    "pl031": lambda clock: Pl031(clock, initial=0),
    "pl061": lambda clock: Pl061(clock),
    "sp805": lambda clock: Sp805(clock, rate=1000),
    "ns16550": lambda clock: Ns16550(clock, reg_shift=2, reg_io_width=4),
}
# The registers worth hitting (the rest of each page is reserved space or IDs).
HOT = {
    "pl011": [0x00, 0x04, 0x18, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38, 0x3C, 0x40, 0x44, 0x48],
    "pl031": [0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x1C],
    "pl061": [0x3FC, 0x004, 0x400, 0x404, 0x408, 0x40C, 0x410, 0x414, 0x418, 0x41C, 0x420],
    "sp805": [0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0xC00, 0xF00, 0xF04],
    "ns16550": [0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x1C],
}

access = st.tuples(
    st.sampled_from(["read", "write", "tick", "input"]),
    st.integers(0, 12), st.sampled_from([1, 2, 4]), st.integers(0, 0xFFFF_FFFF),
)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(FACTORIES)), ops=st.lists(access, max_size=40))
def test_mirror_always_shows_what_a_read_would_return(kind, ops):
    clock = ManualClock()
    model = FACTORIES[kind](clock)
    backend = SimulatedBackend(model, 0x1000)
    view = mmap.mmap(backend.memfd, 0x1000, prot=mmap.PROT_READ)
    hot = HOT[kind]
    fmt = {1: "<B", 4: "<I"}[model.reg_width]
    try:
        for op, pick, size, value in ops:
            offset = hot[pick % len(hot)]
            size = min(size, model.reg_width)
            _step(model, backend, clock, op, offset, size, value)
            for mirrored in model.mirror_offsets:
                (shown,) = struct.unpack_from(fmt, view, mirrored)
                assert shown == model.peek_reg(mirrored), (kind, hex(mirrored))
            for const, expected in model.constants.items():
                assert struct.unpack_from(fmt, view, const)[0] == expected
    finally:
        view.close()
        backend.close()


def _step(model, backend, clock, op, offset, size, value) -> None:
    """One generated operation: a guest access through the backend, time passing, or the
    outside world acting on the model (a received byte, a driven pin)."""
    if op == "read":
        backend.read(0, offset, size)
    elif op == "write":
        backend.write(0, offset, size, value & ((1 << (8 * size)) - 1))
    elif op == "tick":
        clock.advance((value % 5000) / 1000)
    elif hasattr(model, "inject_rx"):
        model.inject_rx(bytes([value & 0xFF]))
    elif hasattr(model, "drive"):
        model.drive(value % 8, bool(value & 0x100))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(FACTORIES)), ops=st.lists(access, max_size=30))
def test_a_quiet_read_is_the_models_read(kind, ops):
    """What the backend repeats for a side-effect-free read (DeviceModel.quiet_read, the
    peeker itself where the model reads the base way) returns what read() returns, in
    every state the model passes through; read once, before the state changes."""
    clock = ManualClock()
    model = FACTORIES[kind](clock)
    backend = SimulatedBackend(model, 0x1000)
    hot = HOT[kind]
    accesses = [(offset + lane, size) for offset in hot for size in (1, 2, 4)
                if size <= model.reg_width for lane in range(0, model.reg_width, size)
                if not model.read_has_side_effects(offset + lane, size)]
    quiet = {access: model.quiet_read(*access) for access in accesses}
    try:
        for op, pick, size, value in ops:
            offset = hot[pick % len(hot)]
            size = min(size, model.reg_width)
            if op != "read":  # a read is what this test holds still
                _step(model, backend, clock, op, offset, size, value)
            for access, read in quiet.items():
                assert read() == model.read(*access), (kind, access)
    finally:
        backend.close()


class Checker:
    """A listener (no automask) that checks every report against the contract."""

    def __init__(self, backend: SimulatedBackend) -> None:
        self.backend = backend
        self.fired = 0

    def irq_fired(self, index: int) -> None:
        assert not self.backend.masked(index), "reported while masked"
        assert self.backend.line(index), "reported a level line that is not asserted"
        self.fired += 1


gpio_op = st.sampled_from(["high", "low", "mask", "unmask", "clear", "ie_on", "ie_off",
                           "edge", "level"])


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(gpio_op, max_size=60))
def test_level_line_never_lost_never_reported_while_masked(ops):
    model = Pl061(ManualClock())
    backend = SimulatedBackend(model)
    checker = Checker(backend)
    backend.attach(None, checker)  # type: ignore[arg-type]   # the reactor is unused
    backend.write(0, Gpio.IEV, 1, 0x01)
    backend.write(0, Gpio.IS, 1, 0x01)
    backend.write(0, Gpio.IE, 1, 0x01)
    reported_since_assert = False
    was_high = backend.line(0)
    for op in ops:
        before = checker.fired
        match op:
            case "high" | "low":
                model.drive(0, op == "high")
            case "mask":
                backend.mask_irq(0)
            case "unmask":
                backend.unmask_irq(0)
                reported_since_assert = False
            case "clear":
                backend.write(0, Gpio.IC, 1, 0x01)
            case "ie_on" | "ie_off":
                backend.write(0, Gpio.IE, 1, int(op == "ie_on"))
            case "edge" | "level":
                backend.write(0, Gpio.IS, 1, int(op == "level"))
        high = backend.line(0)
        if high and not was_high:
            reported_since_assert = False
        if checker.fired > before:
            reported_since_assert = True
        if high and not backend.masked(0):
            assert reported_since_assert, f"asserted, unmasked, never reported after {op}"
        was_high = high
    backend.close()


@settings(max_examples=60, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=30),
       direction=st.integers(0, 255), inputs=st.integers(0, 255))
def test_masked_data_addressing_matches_reference(writes, direction, inputs):
    model = Pl061(ManualClock())
    backend = SimulatedBackend(model)
    backend.write(0, Gpio.DIR, 1, direction)
    model.drive_all(inputs)
    latch = 0
    for select, value in writes:
        backend.write(0, select << 2, 1, value)
        latch = (latch & ~select) | (value & select)
        pads = (latch & direction) | (inputs & ~direction & 0xFF)
        assert model.pins == pads
        for probe in (0xFF, select, 0x0F):
            assert backend.read(0, probe << 2, 1) == pads & probe
    backend.close()


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(FACTORIES)),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 0x3FF), st.sampled_from([1, 2, 4, 8]),
                              st.integers(0, 2**64 - 1)), max_size=60))
def test_any_aligned_access_anywhere_is_answered(kind, ops):
    """Guest accesses of every width to every word of the page (IDs, reserved space, data
    windows) never fail and leave the model consistent with its mirror."""
    clock = ManualClock()
    model = FACTORIES[kind](clock)
    backend = SimulatedBackend(model, 0x1000)
    try:
        for is_write, word, size, value in ops:
            offset = (word * 4) // size * size
            if is_write:
                backend.write(0, offset, size, value & ((1 << (8 * size)) - 1))
            else:
                assert 0 <= backend.read(0, offset, size) < 1 << (8 * size)
            clock.advance(0.0005)
        assert not backend.mapped_writes_pending
    finally:
        backend.close()


def test_a_model_that_reads_its_own_way_gets_its_own_read_repeated():
    """A model overriding read/read_reg/peek_reg is repeated through read(), never
    through a peeker its override would not have called."""

    class Shadowed(Pl031):
        def peek_reg(self, offset: int) -> int:
            return 0x42 if offset == 0x04 else super().peek_reg(offset)

    model = Shadowed(ManualClock(), initial=0)
    assert not model.read_has_side_effects(0x04, 4)
    assert model.quiet_read(0x04, 4)() == model.read(0x04, 4) == 0x42
    plain = Pl031(ManualClock(), initial=0)
    assert plain.quiet_read(0x04, 4) is plain.peekers[0x04]  # the base way: the peeker
    model.close()
    plain.close()
