"""Rate-limited logging for what a peer can make a server say over and over.

A hostile or broken client can make a server log one line per message it sends (200,000
unsolicited replies were 200,000 WARNING lines), and anyone who may connect one line per
connection. :class:`LogLimiter` lets the first ``burst`` lines of each kind (the format
string is the kind) through in each ``interval`` seconds and counts the rest; the count is
reported by the next line of that kind after the interval, and by :meth:`LogLimiter.flush`
(a client's limiter is flushed when it disconnects).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

#: Lines of one kind let through per interval.
BURST = 10
#: Seconds of one rate-limiting window.
INTERVAL = 10.0


class LogLimiter:
    """Per-source rate limit for repeated log lines (see the module doc)."""

    def __init__(self, logger: logging.Logger, *, source: str = "", burst: int = BURST,
                 interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.logger = logger
        self.source = source
        self.burst = burst
        self.interval = interval
        self.clock = clock
        #: kind -> [window start, lines in the window, suppressed in the window]
        self._kinds: dict[str, list[Any]] = {}
        #: Lines suppressed so far, all kinds (never reset).
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self.clock()
        state = self._kinds.get(msg)
        if state is None or now - state[0] >= self.interval:
            if state is not None and state[2]:
                self._report(level, msg, state[2])
            state = [now, 0, 0]
            self._kinds[msg] = state
        state[1] += 1
        if state[1] <= self.burst:
            self.logger.log(level, msg, *args, **kwargs)
            return
        state[2] += 1
        self.suppressed += 1

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.log(logging.INFO, msg, *args, **kwargs)

    def flush(self) -> None:
        """Report every count of suppressed lines not reported yet."""
        for msg, state in self._kinds.items():
            if state[2]:
                self._report(logging.WARNING, msg, state[2])
                state[2] = 0

    def _report(self, level: int, msg: str, count: int) -> None:
        self.logger.log(level, "%s%d more like %r suppressed (at most %d per %.0f s)",
                        f"{self.source}: " if self.source else "", count, msg,
                        self.burst, self.interval,
                        extra={"event": "suppressed"})


__all__ = ["BURST", "INTERVAL", "LogLimiter"]
