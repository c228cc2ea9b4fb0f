"""Property tests on SET_IRQS sequences (issue 3).

Random sequences of line events, valid SET_IRQS calls, resampler writes and invalid calls
run against a device with one level and one edge line. After every step:

* no trigger eventfd is signalled without a line event that explains it (a line that
  rose or is asserted, an edge, a loopback, or the replay of a latched edge on UNMASK),
  and never an eventfd that is not the line's current trigger;
* no level interrupt is lost: an asserted level line with a trigger is always masked
  (it was delivered and awaits UNMASK), and an UNMASK of an asserted line delivers it;
* an edge is delivered at once when unmasked, or exactly once on the UNMASK that follows;
* an invalid call raises and changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vfio_testbed import LineBackend, QuietDriver, drain, make_node, open_fds

from platpass.errors import VfioError
from platpass.firmware.model import Trigger
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import IrqSetFlags as F

LEVEL, EDGE = 0, 1

line_ = st.sampled_from([LEVEL, EDGE])
flag_data = st.sampled_from(["none", "true", "false"])
OPS = st.one_of(
    st.tuples(st.just("raise"), st.just(LEVEL)),
    st.tuples(st.just("lower"), st.just(LEVEL)),
    st.tuples(st.just("pulse"), st.just(EDGE)),
    st.tuples(st.just("trigger"), line_, st.sampled_from([0, 1, -1])),
    st.tuples(st.just("disable"), line_),
    st.tuples(st.just("loopback"), line_, flag_data),
    st.tuples(st.just("mask"), line_, flag_data),
    st.tuples(st.just("unmask"), line_, flag_data),
    st.tuples(st.just("resampler"), line_, st.sampled_from([0, 1, -1])),
    st.tuples(st.just("kick"), line_),
    st.tuples(st.just("invalid"), line_, st.integers(0, 9)),
)


@dataclass
class Harness:
    device: VfioDevice
    backend: LineBackend
    reactor: EpollReactor
    triggers: list[list[int]]  # per line: two candidate trigger eventfds
    resamplers: list[list[int]]  # per line: two candidate resampler eventfds
    current: list[int | None] = field(default_factory=lambda: [None, None])
    resampler_of: list[int | None] = field(default_factory=lambda: [None, None])
    owed_edge: bool = False

    def data(self, choice: str) -> tuple[int, list[bool]]:
        if choice == "none":
            return F.DATA_NONE, []
        return F.DATA_BOOL, [choice == "true"]

    def signals(self) -> list[list[int]]:
        return [[drain(fd) for fd in pool] for pool in self.triggers]

    def state(self) -> tuple[object, ...]:
        return (tuple((ln.trigger_fd, ln.unmask_fd, ln.masked, ln.pending_edge,
                       ln.source_enabled) for ln in self.device.irqs.lines),
                tuple(self.backend.enabled), sorted(open_fds()))


def invalid_call(h: Harness, line: int, kind: int) -> None:
    """A call that is invalid whatever the state; it must raise and change nothing."""
    base = F.DATA_NONE | F.ACTION_UNMASK
    args: list[tuple[int, int, int, int, dict[str, list[int] | list[bool]]]] = [
        (line + 2, base, 0, 1, {}),                          # index out of range
        (line, base, 1, 1, {}),                              # start past the index
        (line, base, 0, 2, {}),                              # count past the index
        (line, base | F.DATA_BOOL, 0, 1, {"bools": [True]}),  # two data types
        (line, F.DATA_NONE, 0, 1, {}),                       # no action
        (line, base | (1 << 9), 0, 1, {}),                   # unknown bit
        (line, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, {"fds": [h.resamplers[line][0], -1]}),
        (line, F.DATA_EVENTFD | F.ACTION_MASK, 0, 0, {}),    # count 0 is trigger-only
    ]
    read_end, write_end = os.pipe()
    closed = os.eventfd(0)
    os.close(closed)
    args += [
        (line, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, {"fds": [closed]}),    # EBADF
        (line, F.DATA_EVENTFD | F.ACTION_UNMASK, 0, 1, {"fds": [read_end]}),  # not eventfd
    ]
    index, flags, start, count, data = args[kind]
    try:
        before = h.state()
        try:
            h.device.set_irqs(index, flags, start, count, **data)  # type: ignore[arg-type]
        except VfioError:
            pass
        else:
            raise AssertionError(f"invalid call {args[kind]} accepted")
        assert h.state() == before
    finally:
        os.close(read_end)
        os.close(write_end)


def step(h: Harness, op: tuple[object, ...]) -> None:
    kind, line = op[0], int(op[1])  # type: ignore[call-overload]
    dev, lines = h.device, h.device.irqs.lines
    level = lines[LEVEL]
    asserted_before = h.backend.asserted[LEVEL]
    masked_before = [ln.masked for ln in lines]
    loopback = False
    user_mask = False
    effective_unmask = False

    if kind == "raise":
        h.backend.raise_line(LEVEL)
    elif kind == "lower":
        h.backend.lower_line(LEVEL)
    elif kind == "pulse":
        h.backend.pulse(EDGE)
    elif kind == "trigger":
        choice = int(op[2])  # type: ignore[call-overload]
        fd = h.triggers[line][choice] if choice >= 0 else -1
        dev.set_irqs(line, F.DATA_EVENTFD | F.ACTION_TRIGGER, 0, 1, fds=[fd])
        h.current[line] = fd if fd >= 0 else None
    elif kind == "disable":
        dev.set_irqs(line, F.DATA_NONE | F.ACTION_TRIGGER, 0, 0)
        h.current[line] = None
    elif kind == "loopback":
        data, bools = h.data(str(op[2]))
        wants = data == F.DATA_NONE or bools[0]
        try:
            dev.set_irqs(line, data | F.ACTION_TRIGGER, 0, 1, bools=bools)
        except VfioError:
            assert wants and h.current[line] is None
        loopback = wants and h.current[line] is not None
    elif kind in ("mask", "unmask"):
        data, bools = h.data(str(op[2]))
        action = F.ACTION_MASK if kind == "mask" else F.ACTION_UNMASK
        dev.set_irqs(line, data | action, 0, 1, bools=bools)
        wants = data == F.DATA_NONE or bools[0]
        user_mask = kind == "mask" and wants
        effective_unmask = kind == "unmask" and wants and masked_before[line]
    elif kind == "resampler":
        choice = int(op[2])  # type: ignore[call-overload]
        fd = h.resamplers[line][choice] if choice >= 0 else -1
        dev.set_irqs(line, F.DATA_EVENTFD | F.ACTION_UNMASK, 0, 1, fds=[fd])
        h.resampler_of[line] = fd if fd >= 0 else None
    elif kind == "kick":
        fd = h.resampler_of[line]
        if fd is not None:
            os.eventfd_write(fd, 1)
            h.reactor.run_once(0)
            effective_unmask = masked_before[line]
            assert not lines[line].masked or (line == LEVEL and h.backend.asserted[LEVEL])
    else:
        invalid_call(h, line, int(op[2]))  # type: ignore[call-overload]
        kind = "invalid"

    got = h.signals()
    for index in (LEVEL, EDGE):
        for pool_index, count in enumerate(got[index]):
            if count:
                assert h.triggers[index][pool_index] == h.current[index], (
                    f"line {index}: signal on an eventfd that is not its trigger")
    level_signals, edge_signals = sum(got[LEVEL]), sum(got[EDGE])

    # -- level line -------------------------------------------------------------------
    asserted = h.backend.asserted[LEVEL]
    assert level_signals <= 1
    if level_signals:
        assert asserted or (loopback and line == LEVEL), "level signal without a line event"
    if asserted and h.current[LEVEL] is not None:
        assert level.masked, "asserted level line with a trigger left unmasked: lost"
    if not masked_before[LEVEL] and level.masked and not (user_mask and line == LEVEL):
        assert level_signals == 1, "automasked without a signal"
    if line == LEVEL and effective_unmask and asserted and h.current[LEVEL] is not None:
        assert level_signals == 1, "UNMASK of an asserted level line delivered nothing"
    if kind == "raise" and not asserted_before and h.current[LEVEL] is not None \
            and not masked_before[LEVEL]:
        assert level_signals == 1

    # -- edge line --------------------------------------------------------------------
    edge = lines[EDGE]
    event = (kind == "pulse" and h.current[EDGE] is not None) or (loopback and line == EDGE)
    unmasked_now = masked_before[EDGE] and not edge.masked
    if event and not masked_before[EDGE]:
        assert edge_signals == 1, "edge on an unmasked line not delivered"
    elif event:
        h.owed_edge = True
        assert edge_signals == 0, "edge on a masked line delivered"
    elif unmasked_now:
        assert edge_signals == (1 if h.owed_edge else 0), "latched edge replay"
        h.owed_edge = False
    else:
        assert edge_signals == 0, "edge signal without an edge"
    if h.current[EDGE] is None:
        h.owed_edge = False  # a latched edge dies with its trigger, as with free_irq
    assert edge.pending_edge == h.owed_edge


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, min_size=8, max_size=40))
def test_set_irqs_sequences_keep_the_interrupt_rules(ops: list[tuple[object, ...]]) -> None:
    reactor = EpollReactor()
    made = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(8)]
    backend = LineBackend(irq_count=2)
    node = make_node(triggers=(Trigger.LEVEL_HIGH, Trigger.EDGE_RISING))
    device = VfioDevice(node, QuietDriver(node), backend, reactor)
    h = Harness(device, backend, reactor, [made[0:2], made[2:4]], [made[4:6], made[6:8]])
    try:
        for op in ops:
            step(h, op)
        device.close()
        assert all(ln.trigger_fd is None and ln.unmask_fd is None for ln in device.irqs.lines)
    finally:
        for fd in made:
            os.close(fd)
        reactor.close()
