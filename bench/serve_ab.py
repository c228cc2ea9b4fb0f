"""A/B of two checkouts' ``platpass serve`` on the trapped read, with the same client.

Starts ``platpass serve --sim`` of the board PL011 from each checkout's ``src`` in turn
(``--baseline-src``, e.g. a ``git worktree`` of an older commit, and this checkout), pins it
and this client to one CPU, and times 4-byte REGION_READs of ``UARTFR`` with this
checkout's :class:`VfioUserClient`; rounds alternate so both see the same machine. Prints
the median of each round and the ratio of the best medians (this / baseline).

    python3 bench/serve_ab.py --baseline-src ../old/src [--rounds 3] [--reads 4000] [--cpu 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from platpass.vfio_user.client import VfioUserClient

UART = "/soc@9000000/serial@0"
UARTFR = 0x18


def one_round(src: str, cpu: int, reads: int) -> float:
    """Median µs of ``reads`` REGION_READs against a server from ``src``."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=src)
        proc = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-m", "platpass",
                                 "serve", "--sim", UART, "--socket-dir", tmp],
                                stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == "ready":
                    break
            else:
                raise SystemExit(f"{src}: platpass serve did not start")
            with VfioUserClient.connect(Path(tmp) / "serial@0.sock") as client:
                for _ in range(reads // 8):
                    client.read(0, UARTFR, 4)
                clock = time.perf_counter_ns
                samples = []
                for _ in range(reads):
                    t0 = clock()
                    client.read(0, UARTFR, 4)
                    samples.append(clock() - t0)
        finally:
            proc.terminate()
            proc.wait(10)
    return statistics.median(samples) / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-src", required=True, help="the other checkout's src/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=4000)
    parser.add_argument("--cpu", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    here = str(Path(__file__).resolve().parents[1] / "src")
    trees = {"baseline": os.path.abspath(args.baseline_src), "this": here}
    results: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, src in trees.items():
            results[name].append(one_round(src, args.cpu, args.reads))
    print(f"server and client on CPU {args.cpu}; {args.reads} reads of PL011 UARTFR per round")
    for name, medians in results.items():
        print(f"  {name:8} ({trees[name]}): medians " +
              " ".join(f"{m:.1f}" for m in medians) + f" µs, best {min(medians):.1f} µs")
    print(f"  ratio this / baseline (best medians): "
          f"{min(results['this']) / min(results['baseline']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
