"""Cost of ``--trace``: a trapped register access on a traced device, beside the same
access on an untraced one, measured in the same run.

The traced path adds one JSON record written and flushed per access (to a file on the
filesystem the trace is given), so the ratio says what a tracing session costs the guest;
untraced devices pay nothing (the wrappers exist only on traced instances, and the IRQ
controller's observer check is one attribute test per interrupt event).

    python3 bench/trace.py [--number N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from platpass.drivers.registry import default_registry
from platpass.host.simulated import ManualClock
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.ops.trace import DeviceTracer, TraceWriter
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice

GPIO = "/soc@9000000/gpio@30000"
RIS = 0x414  # PL061 GPIORIS: trapped by the platpass driver


def best(fn: Callable[[], object], number: int) -> float:
    """Best of five runs, in microseconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def device(reactor: EpollReactor) -> VfioDevice:
    node = load_board().node(GPIO)
    backend = open_sim_backend(node, reactor, ManualClock())
    driver = default_registry(plugins=False).match(node.compatible)(node)
    dev = VfioDevice(node, driver, backend, reactor, force_trap_all=True)
    dev.open()
    return dev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--dir", default=None, help="where the trace file goes (default: "
                        "a temporary directory)")
    args = parser.parse_args()
    print(f"platpass bench/trace.py  cpu affinity {sorted(os.sched_getaffinity(0))}  "
          f"best of 5 x {args.number}")
    reactor = EpollReactor()
    plain = device(reactor)
    base_read = best(lambda: plain.read(0, RIS, 1), args.number)
    base_write = best(lambda: plain.write(0, 0x400, 1, 0x0F), args.number)
    for mode, batched in (("flushed per record", False), ("batched (serve/up)", True)):
        traced = device(reactor)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            # Batched: flushed by a reactor timer, as serve --trace does (the loop does not
            # run here, so the file buffer flushes when full, which is the same cost).
            writer = TraceWriter(Path(tmp) / "trace.jsonl", reactor.time,
                                 reactor=reactor if batched else None)
            DeviceTracer(writer, traced, GPIO)
            trace_read = best(lambda: traced.read(0, RIS, 1), args.number)  # noqa: B023
            trace_write = best(lambda: traced.write(0, 0x400, 1, 0x0F),  # noqa: B023
                               args.number)
            writer.close()
            size = (Path(tmp) / "trace.jsonl").stat().st_size
        print(f"-- {mode}: {writer.records} records, {size / writer.records:.0f} bytes each")
        for what, base, cost in (("trapped read (GPIORIS)", base_read, trace_read),
                                 ("write (GPIODIR)", base_write, trace_write)):
            print(f"{what:24s} traced {cost:7.2f} us   untraced (baseline) {base:6.2f} us   "
                  f"ratio {cost / base:5.2f}x   +{cost - base:5.2f} us")
        traced.close()
    plain.close()
    reactor.close()


if __name__ == "__main__":
    main()
