"""The time source the simulated models run on.

Models never poll and never sleep: every time-driven behaviour (a UART shifting a
character out, the PL031's 1 Hz counter, the SP805 reaching zero) is a callback scheduled
for the moment it happens. In a running process the clock is the reactor's; tests inject a
:class:`ManualClock` and move time by hand, which makes every timed sequence exact and fast.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from platpass.reactor import Reactor


class Cancellable(Protocol):
    """A scheduled callback that can be forgotten."""

    def cancel(self) -> None:
        """Make the callback a no-op."""
        ...


class ModelClock(Protocol):
    """What a model needs of time: the current time and one-shot timers."""

    def now(self) -> float:
        """Current time in seconds (monotonic)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` once, ``delay`` seconds from now."""
        ...


class ReactorClock:
    """The clock of a running process: the reactor's monotonic time and timers."""

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor

    def now(self) -> float:
        return self._reactor.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        return self._reactor.call_later(delay, callback)


@dataclass(order=True)
class _ManualTimer:
    when: float
    seq: int
    callback: Callable[[], None] | None = field(compare=False)

    def cancel(self) -> None:
        self.callback = None


class ManualClock:
    """A clock that only moves when a test says so (:meth:`advance`).

    Callbacks run in time order, each seeing :meth:`now` equal to its own due time, so a
    model that reschedules itself from a callback behaves exactly as under a real clock.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[_ManualTimer] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Cancellable:
        timer = _ManualTimer(self._now + max(delay, 0.0), next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> int:
        """Move time forward by ``seconds``, running every callback that falls due;
        returns how many ran."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        deadline = self._now + seconds
        ran = 0
        while self._timers and self._timers[0].when <= deadline:
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            callback, timer.callback = timer.callback, None
            if callback is not None:
                callback()
                ran += 1
        self._now = deadline
        return ran

    @property
    def pending(self) -> int:
        """How many live callbacks are scheduled (tests check that models do not poll)."""
        return sum(1 for timer in self._timers if timer.callback is not None)
