"""Guest side of the harness: report named checks on the console for the host to collect.

A scenario is a list of step functions; a step that raises is reported as a failed check
named after it (with the traceback), and the next step still runs, so one boot reports
everything it can.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable

failures = 0


def check(name: str, ok: bool, **detail: object) -> bool:
    """Report check ``name``; ``detail`` is the evidence shown when it fails."""
    global failures
    if not ok:
        failures += 1
    print("@@CHECK " + json.dumps({"name": name, "ok": bool(ok), "detail": detail},
                                  default=repr), flush=True)
    return bool(ok)


def counted_seconds(t0: int, t1: int, elapsed: float) -> bool:
    """An RTC that counts seconds moved by the whole seconds of ``elapsed`` (guest
    monotonic time between the two reads), give or take the second boundaries."""
    return t1 - t0 >= 1 and abs((t1 - t0) - elapsed) < 1.5


def host(command: str) -> None:
    """Ask the host to run a QEMU monitor command (e.g. ``system_powerdown``)."""
    print(f"@@HOST {command}", flush=True)


def run_steps(steps: list[Callable[[], None]]) -> None:
    """Run each step, report a crash as a failed check, exit with the failure count."""
    for step in steps:
        started = time.monotonic()
        try:
            step()
        except Exception:
            check(f"{step.__name__}.completed", False, traceback=traceback.format_exc())
        else:
            check(f"{step.__name__}.completed", True,
                  seconds=round(time.monotonic() - started, 3))
    sys.exit(1 if failures else 0)
