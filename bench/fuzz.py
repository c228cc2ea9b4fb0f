"""Long fuzz runs of the vfio-user server, with the rate of valid traffic as the baseline.

    python3 bench/fuzz.py --seconds 3600                 # every target, an hour each
    python3 bench/fuzz.py --target direct --seconds 600 --seed 42
    python3 bench/fuzz.py --replay CASE_SEED --target direct

Everything but the baseline is ``python3 -m platpass.vfio_user.fuzz`` (same options, same
exit status: 1 when anything was found). The baseline is the message rate of the seed
corpus *unmutated* through the same in-process Connection + Session, so the fuzz rate
can be read against what the server does with well-formed traffic: mutated messages are
mostly refused early, so the ratio is above 1 when the checks are cheap.
"""

from __future__ import annotations

import sys
import time

from platpass.vfio_user import fuzz
from platpass.vfio_user.protocol.connection import Message
from platpass.vfio_user.protocol.header import HEADER_SIZE, Command, Header


def baseline_rate(seconds: float = 2.0) -> float:
    """Valid seed messages per second through Session.handle (negotiated, no fds)."""
    target = fuzz.DirectTarget()
    try:
        from platpass.vfio_user.session import Session

        corpus = [s for s in fuzz.seed_corpus() if not s.fds and s.command != Command.VERSION]
        session = Session(target.devices[0], target.limits)
        body = fuzz.NEGOTIATE.encode()
        session.handle(Message(Header(0, Command.VERSION, HEADER_SIZE + len(body), 0), body))
        messages = [Message(Header(n & 0xFFFF, s.command, HEADER_SIZE + len(s.payload), 0),
                            s.payload) for n, s in enumerate(corpus)]
        count = 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            for message in messages:
                session.handle(message)
            count += len(messages)
        return count / (time.monotonic() - start)
    finally:
        target.close()


def main() -> int:
    args = sys.argv[1:]
    if "--seconds" not in args and "--messages" not in args and "--replay" not in args:
        args += ["--seconds", "60"]
    reports: list[fuzz.FuzzReport] = []
    status = fuzz.main(args, reports)
    if "--replay" not in args:
        base = baseline_rate()
        print(f"baseline: {base:,.0f} valid msg/s through Session.handle (same run)")
        for report in reports:
            print(f"  {report.target}: {report.rate:,.0f} fuzz msg/s = "
                  f"{report.rate / base:.2f}x the baseline (includes case generation, fds, "
                  "state snapshots, fd scans{})".format(
                      "; sockets" if report.target != "direct" else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
