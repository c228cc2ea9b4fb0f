"""Benchmark: ``platpass scan`` over all 577 DTBs of Debian's arm64 kernel, against dtc.

Downloads ``linux-image-6.1.0-56-arm64`` (arm64) with apt-get into a cache directory on the
first run, then, in one process, loads every DTB, resolves its devices and judges them
(load + devices + assess, i.e. what ``platpass scan`` does), and times ``dtc -I dtb -O dts
-o /dev/null`` over the same files in the same run. Prints nodes, nodes/s, both times and
the ratio (target: <= 1.0, i.e. a full scan costs no more than decompiling the trees).

    python3 bench/scan.py [--dir DIR] [--repeat N] [--chunk N] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.firmware.devicetree import load_dtb
from platpass.firmware.verdict import assess_tree

PACKAGE = "linux-image-6.1.0-56-arm64"
DEFAULT_CACHE = (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                 / "platpass" / "bench")


def fetch(cache: Path) -> Path:
    """The extracted package tree, downloading and unpacking it on the first run."""
    extracted = cache / PACKAGE
    if any(extracted.rglob("*.dtb")):
        return extracted
    cache.mkdir(parents=True, exist_ok=True)
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], check=True,
                             capture_output=True, text=True).stdout.split()
    if "arm64" not in foreign:
        subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
        subprocess.run(["apt-get", "update", "-q"], check=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*_arm64.deb"))
    if not debs:
        print(f"downloading {PACKAGE}:arm64 into {cache} ...", file=sys.stderr)
        result = subprocess.run(["apt-get", "download", f"{PACKAGE}:arm64"], cwd=cache,
                                check=False)
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(["apt-get", "download", f"{PACKAGE}:arm64"], cwd=cache, check=True)
        debs = sorted(cache.glob(f"{PACKAGE}_*_arm64.deb"))
    tmp = cache / f"{PACKAGE}.partial"
    subprocess.run(["rm", "-rf", str(tmp)], check=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tmp)], check=True)
    tmp.rename(extracted)
    return extracted


def scan_files(files: list[Path], registry: DriverRegistry) -> tuple[int, int]:
    """Load, resolve and judge every file (what ``platpass scan`` does): nodes, devices."""
    nodes = devices = 0
    for path in files:
        tree = load_dtb(path)
        devices += len(assess_tree(tree, registry))
        nodes += len(tree)
    return nodes, devices


def dtc_files(files: list[Path]) -> None:
    """``dtc -I dtb -O dts -o /dev/null`` over every file, one process each."""
    for path in files:
        subprocess.run(["dtc", "-I", "dtb", "-O", "dts", "-o", "/dev/null", str(path)],
                       check=True, stderr=subprocess.DEVNULL)


def one_run(files: list[Path], registry: DriverRegistry,
            chunk: int) -> tuple[float, float, int, int]:
    """Both sides over all files, alternating every ``chunk`` files.

    Alternating in small chunks exposes both sides to the same background load (this
    machine is shared), so the ratio stays meaningful when absolute times drift.
    """
    ours = theirs = 0.0
    nodes = devices = 0
    for i in range(0, len(files), chunk):
        part = files[i:i + chunk]
        start = time.perf_counter()
        n, d = scan_files(part, registry)
        ours += time.perf_counter() - start
        nodes, devices = nodes + n, devices + d
        start = time.perf_counter()
        dtc_files(part)
        theirs += time.perf_counter() - start
    return ours, theirs, nodes, devices


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="scan the DTBs under DIR instead")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each side; the best of each is compared")
    parser.add_argument("--chunk", type=int, default=20,
                        help="alternate the two sides every CHUNK files")
    args = parser.parse_args()
    root = args.dir if args.dir is not None else fetch(args.cache)
    files = sorted(root.rglob("*.dtb"))
    if not files:
        print(f"no DTBs under {root}", file=sys.stderr)
        return 1
    registry = default_registry(plugins=False)
    ours, theirs = [], []
    nodes = devices = 0
    for _ in range(args.repeat):
        mine, base_run, nodes, devices = one_run(files, registry, args.chunk)
        ours.append(mine)
        theirs.append(base_run)
    best, base = min(ours), min(theirs)
    print(f"files:            {len(files)} DTBs under {root}")
    print(f"device nodes:     {nodes} ({devices} MMIO devices judged)")
    print(f"platpass scan:    {best:.3f} s  ({nodes / best:,.0f} nodes/s, "
          f"{best / len(files) * 1e3:.2f} ms/file; runs: "
          f"{', '.join(f'{s:.3f}' for s in ours)})")
    print(f"dtc -I dtb -O dts: {base:.3f} s  ({nodes / base:,.0f} nodes/s, "
          f"{base / len(files) * 1e3:.2f} ms/file; runs: "
          f"{', '.join(f'{s:.3f}' for s in theirs)})")
    ratios = sorted(m / b for m, b in zip(ours, theirs, strict=True))
    print(f"ratio platpass/dtc: {best / base:.2f}x best-to-best, per run "
          f"{', '.join(f'{r:.2f}' for r in ratios)} (target <= 1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
