"""Cost of a trapped register access into a simulated model, beside a mapped read.

Every access the VFIO device traps on the simulated board runs one model step: reconcile
the memfd, the register's side effects, publish the mirror, report line changes. This prints
that cost per model and register kind, beside the baseline measured in the same run: a read
of the same memfd through an ``mmap`` (what a mapped page would cost the reading process),
with ``struct.unpack_from`` and with ``memoryview.cast('I')``.

A second table rotates the same reads over 256 backends (caches cold at each visit, as in a
server with many devices: ``bench/scale.py``), beside the backend's previous page check in
the same run (copy the 4 KiB page, then compare it with the shadow, on every device).

    python3 bench/sim_access.py [--number N]
"""

from __future__ import annotations

import argparse
import mmap
import os
import struct
import timeit
from collections.abc import Callable

from platpass.host.simulated import ManualClock, SimulatedBackend
from platpass.host.simulated.models import Ns16550, Pl011, Pl031, Pl061, Sp805
from platpass.host.simulated.models.base import DeviceModel


def best(fn: Callable[[], object], number: int) -> float:
    """Best of five runs, in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


class CopyingCheck(SimulatedBackend):
    """The baseline: the page check as it was before only mappable pages were watched
    (copy the whole memfd page, compare it with the shadow, for every device)."""

    def _mapped_differs(self) -> bool:
        mm = self._mm
        assert mm is not None
        return mm[: self._span] != self._shadow


def rotating(factory: Callable[[], DeviceModel], backend_class: type[SimulatedBackend],
             offset: int, count: int, number: int) -> float:
    """Microseconds per trapped read of ``offset``, rotating over ``count`` backends."""
    backends = [backend_class(factory()) for _ in range(count)]
    reads = [b.read for b in backends]
    index = 0

    def one() -> None:
        nonlocal index
        reads[index](0, offset, 4)
        index = (index + 1) % count

    cost = best(one, number)
    for backend in backends:
        backend.close()
    return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=50_000)
    number = parser.parse_args().number
    print(f"platpass bench/sim_access.py  cpu affinity {sorted(os.sched_getaffinity(0))}  "
          f"best of 5 x {number}")

    rtc = SimulatedBackend(Pl031(ManualClock(), initial=0))
    view = mmap.mmap(rtc.memfd, mmap.PAGESIZE)
    words = memoryview(view).cast("I")
    unpack = best(lambda: struct.unpack_from("<I", view, 0), number)
    cast = best(lambda: words[0], number)
    print(f"baseline: mapped read of the memfd  unpack_from {unpack:6.3f} us   "
          f"memoryview.cast {cast:6.3f} us")

    uart = SimulatedBackend(Pl011(ManualClock()))
    gpio = SimulatedBackend(Pl061(ManualClock()))
    wdt = SimulatedBackend(Sp805(ManualClock()))
    ns = SimulatedBackend(Ns16550(ManualClock(), reg_shift=2, reg_io_width=4), 0x1000)
    rows: list[tuple[str, Callable[[], object]]] = [
        ("PL031 RTCDR read (no side effect)", lambda: rtc.read(0, 0x000, 4)),
        ("PL031 RTCIMSC write", lambda: rtc.write(0, 0x010, 4, 0)),
        ("PL011 UARTFR read (no side effect)", lambda: uart.read(0, 0x018, 4)),
        ("PL011 UARTDR read (FIFO pop, empty)", lambda: uart.read(0, 0x000, 4)),
        ("PL011 UARTIMSC write", lambda: uart.write(0, 0x038, 4, 0)),
        ("PL061 GPIODATA masked write", lambda: gpio.write(0, 0x3FC, 1, 0)),
        ("SP805 WdogValue read (computed)", lambda: wdt.read(0, 0x004, 4)),
        ("16550 LSR read (clear on read)", lambda: ns.read(0, 0x014, 4)),
    ]
    for name, fn in rows:
        cost = best(fn, number)
        print(f"{name:38s} {cost:6.2f} us   {cost / unpack:6.1f}x unpack_from   "
              f"{cost / cast:6.1f}x memoryview")
    words.release()
    view.close()
    for backend in (rtc, uart, gpio, wdt, ns):
        backend.close()

    count = 256
    print(f"\nrotating over {count} backends (cold caches); baseline: the previous "
          "page check (copy + compare the page on every device), same run")
    cold: list[tuple[str, Callable[[], DeviceModel], int]] = [
        ("PL031 RTCDR read (page mappable)", lambda: Pl031(ManualClock(), initial=0), 0x000),
        ("PL011 UARTFR read (never mappable)", lambda: Pl011(ManualClock()), 0x018),
    ]
    for name, factory, offset in cold:
        before = rotating(factory, CopyingCheck, offset, count, number)
        now = rotating(factory, SimulatedBackend, offset, count, number)
        print(f"{name:38s} {now:6.2f} us   baseline {before:6.2f} us   "
              f"{now / before:5.2f}x   saved {before - now:5.2f} us")


if __name__ == "__main__":
    main()
