"""How long ``guest-dt`` takes to describe every assignable device of a board to a guest.

For each real board of the test suite (tests/real_dtbs.py, fetched on first use): load
the tree, judge it, place and transform every assignable device, and compile the crosvm
overlay with dtc (warnings are errors). Baseline, measured in the same run: one plain
``dtc -I dtb -O dtb`` pass over the same board's blob, the irreducible cost of running dtc
once on that tree. Prints per-flavour totals, the baseline and the ratio.

    python3 bench/guest_dt.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from platpass.drivers.registry import default_registry
from platpass.firmware.devicetree import load_dtb
from platpass.firmware.verdict import Verdict, assess_tree
from platpass.guest.flavours import Flavour, crosvm, xen
from platpass.guest.placement import SpiPool, new_record
from platpass.guest.plan import plan_guest, trigger_hints
from platpass.guest.transform import ClockRates

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import real_dtbs

real_dtbs.ensure()
DTBS = list(real_dtbs.PATHS)
RATES = ClockRates(overrides={"*": 24_000_000})


def guest_dt(path: Path, registry, flavour: Flavour) -> int:
    tree = load_dtb(path)
    devices = [(a.node, a.driver(a.node)) for a in assess_tree(tree, registry)
               if a.verdict in (Verdict.ASSIGNABLE, Verdict.ASSIGNABLE_WITH_TRAPS)]
    if flavour is Flavour.XEN:
        seen: set[int] = set()
        keep = []
        for node, driver in devices:
            spis = {i.number for i in node.interrupts}
            if all(i.type.value == "SPI" for i in node.interrupts) and not spis & seen:
                seen |= spis
                keep.append((node, driver))
        devices = keep
    if not devices:
        return 0
    guests, _ = plan_guest(devices, flavour, new_record(spi_pool=SpiPool(64, 900)),
                           rates=RATES, host_phandles=frozenset(tree.raw.by_phandle),
                           trigger_hints=trigger_hints({n.path: n.props
                                                        for n in tree.raw.nodes}))
    (crosvm.build if flavour is Flavour.CROSVM else xen.build)(guests)
    return len(guests)


def dtc_pass(path: Path) -> None:
    subprocess.run(["dtc", "-I", "dtb", "-O", "dtb", "-o", "/dev/null", str(path)],
                   check=True, capture_output=True)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    registry = default_registry()
    for flavour in (Flavour.CROSVM, Flavour.XEN):
        ours, base, devices = [], [], 0
        for _ in range(rounds):
            start = time.perf_counter()
            devices = sum(guest_dt(p, registry, flavour) for p in DTBS)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            for p in DTBS:
                dtc_pass(p)
            base.append(time.perf_counter() - start)
        o, b = statistics.median(ours), statistics.median(base)
        print(f"{flavour:7} {len(DTBS)} boards, {devices} devices: guest-dt {o * 1000:8.1f} ms "
              f"({o / max(devices, 1) * 1e6:6.0f} us/device) | baseline one dtc pass per "
              f"board {b * 1000:8.1f} ms | ratio {o / b:5.2f}x  (median of {rounds})")


if __name__ == "__main__":
    main()
