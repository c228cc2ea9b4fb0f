"""``platpass scan``: what can be assigned on this board, and why (not).

Sources, in the order given on the command line: ``--dtb FILE|DIR`` (a directory is searched
recursively for ``*.dtb``), ``--dts FILE``, ``--live``. With none, the live tree when the
kernel exposes one, otherwise the simulated board shipped in the package.

``--json`` prints one JSON array over every file; its shape is a public interface (see
docs/safety.md, "--json"): keep it stable, extend it only by adding keys.

A file that cannot be read is reported on stderr and skipped; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from platpass.assembly.plan import log_waivers
from platpass.cli.host_use import (
    add_override_option,
    add_together_option,
    groups_for,
    overrides_for,
)
from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.errors import DeviceTreeLoadError, FirmwareError
from platpass.firmware.devicetree import LIVE_FDT, DeviceTree, load_dtb, load_dts, load_live
from platpass.firmware.verdict import Assessment, Verdict, assess_tree

#: Show a progress line on stderr from this many files on.
PROGRESS_FROM = 5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``scan`` to the ``platpass`` command line."""
    parser = subparsers.add_parser(
        "scan",
        help="list devices and whether each can be assigned without an IOMMU",
        description="Judge every MMIO device of one or more device trees: ASSIGNABLE, "
                    "ASSIGNABLE_WITH_TRAPS, or REFUSED_* with the evidence.",
    )
    parser.add_argument("sources", nargs="*", metavar="FILE|DIR",
                        help="shorthand: *.dts files as --dts, anything else as --dtb")
    parser.add_argument("--dtb", action="extend", nargs="+", default=[], metavar="FILE|DIR",
                        help=".dtb files, or directories searched for *.dtb (repeatable)")
    parser.add_argument("--dts", action="extend", nargs="+", default=[], metavar="FILE",
                        help=".dts files, compiled with dtc (repeatable)")
    parser.add_argument("--live", action="store_true",
                        help=f"the running kernel's tree ({LIVE_FDT})")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON array (stable schema: docs/safety.md)")
    parser.add_argument("--all", action="store_true",
                        help="include nodes that are not MMIO devices")
    add_override_option(parser)
    add_together_option(parser)
    parser.set_defaults(func=run)


def sim_board_path() -> Path:
    """The simulated board's DTS shipped inside the package."""
    return Path(str(resources.files("platpass") / "boards" / "sim-board.dts"))


def _sources(args: argparse.Namespace) -> Iterator[tuple[str, Callable[[], DeviceTree]]]:
    """``(label, loader)`` for every tree to scan, expanding directories."""
    dtbs = list(args.dtb) + [e for e in args.sources if not e.endswith(".dts")]
    dtss = list(args.dts) + [e for e in args.sources if e.endswith(".dts")]
    for entry in dtbs:
        path = Path(entry)
        if path.is_dir():
            files = sorted(path.rglob("*.dtb"))
            if not files:
                yield str(path), _fail(f"{path}: no .dtb files in this directory")
            for file in files:
                yield str(file), _bind(load_dtb, file)
        else:
            yield str(path), _bind(load_dtb, path)
    for entry in dtss:
        yield str(entry), _bind(load_dts, Path(entry))
    if args.live:
        yield str(LIVE_FDT), load_live
    if not (dtbs or dtss or args.live):
        if LIVE_FDT.exists():
            yield str(LIVE_FDT), load_live
        else:
            board = sim_board_path()
            if board.exists():
                yield str(board), _bind(load_dts, board)
            else:
                yield str(board), _fail(
                    f"no source given, {LIVE_FDT} does not exist and the simulated board "
                    f"is not installed at {board}: give --dtb, --dts or --live")


def _bind(loader: Callable[[Path], DeviceTree], path: Path) -> Callable[[], DeviceTree]:
    return lambda: loader(path)


def _fail(message: str) -> Callable[[], DeviceTree]:
    def loader() -> DeviceTree:
        raise DeviceTreeLoadError(message)
    return loader


def live_backend(assessment: Assessment, sysfs: Path = Path("/sys")) -> str | None:
    """On the live tree: the backend ``assign`` would use for an assignable device, with
    its host driver (``kmod (platpass-vfio-platform)``), or why there is none; None for a
    refused device or one the kernel created no platform/AMBA device for."""
    from platpass.errors import HostError
    from platpass.host import binding
    from platpass.host.sysfs import device_for_node

    if not assessment.verdict.assignable:
        return None
    try:
        device = device_for_node(assessment.node.path, sysfs)
    except HostError:
        return None
    backend = binding.auto_backend(device.bus, sysfs)
    try:
        return f"{backend} ({binding.host_driver_for(backend, device.bus)})"
    except HostError:
        return f"none: {device.bus} device, load platpass_vfio (or --backend vfio)"


def as_json(source: str, assessment: Assessment,
            backend: str | None = None) -> dict[str, Any]:
    """One entry of ``scan --json`` (the documented, stable schema); ``backend`` is
    :func:`live_backend` on the live tree, else None."""
    node = assessment.node
    return {
        "file": source,
        "path": node.path,
        "compatible": list(node.compatible),
        "status": node.status,
        "verdict": assessment.verdict.value,
        "reasons": list(assessment.reasons),
        "regions": [{"address": r.address, "size": r.size} for r in node.regions],
        "irqs": [{"controller": i.controller, "type": i.type.value, "number": i.number,
                  "trigger": i.trigger.value} for i in node.interrupts],
        "driver": assessment.driver.name if assessment.driver is not None else None,
        "consumers": [{"consumer": c.consumer, "property": c.property, "supplier": c.supplier}
                      for c in assessment.consumers],
        "backend": backend,
    }


def _regions_text(assessment: Assessment) -> str:
    return " ".join(f"{r.address:#x}+{r.size:#x}" for r in assessment.node.regions) or "-"


def _irqs_text(assessment: Assessment) -> str:
    return ", ".join(
        f"{i.type.value} {i.number} {i.trigger.value}" for i in assessment.node.interrupts
    ) or "-"


def print_table(source: str, assessments: list[Assessment], out: TextIO,
                backends: dict[str, str | None] | None = None) -> None:
    """The human-readable report of one tree: a row per device, its reasons below it
    (and on the live tree the backend ``assign`` would use, from ``backends``)."""
    print(f"== {source}: {len(assessments)} devices", file=out)
    if not assessments:
        return
    rows = []
    for a in assessments:
        status = "" if a.node.enabled else f" [{a.node.status}]"
        rows.append((a.verdict.value, a.node.path + status, _regions_text(a), _irqs_text(a),
                     a.driver.name if a.driver is not None else "-"))
    headers = ("VERDICT", "DEVICE", "REGIONS", "IRQS", "DRIVER")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*headers), file=out)
    for a, row in zip(assessments, rows, strict=True):
        print(fmt.format(*row).rstrip(), file=out)
        for reason in a.reasons:
            print(f"    - {reason}", file=out)
        if backends and backends.get(a.node.path):
            print(f"    backend: {backends[a.node.path]}", file=out)


def _progress(done: int, total: int, label: str) -> None:
    if total < PROGRESS_FROM:
        return
    if sys.stderr.isatty():
        end = "\n" if done == total else ""
        print(f"\rscanning [{done}/{total}] {Path(label).name[:60]:<60}", end=end,
              file=sys.stderr, flush=True)
    elif done == total or done % max(1, total // 10) == 0:
        print(f"scanning: {done}/{total} files", file=sys.stderr, flush=True)


def scan(args: argparse.Namespace, registry: DriverRegistry | None = None,
         out: TextIO | None = None) -> int:
    """Scan every source in ``args``; returns the exit status (1 if any file failed)."""
    out = out if out is not None else sys.stdout
    registry = registry if registry is not None else default_registry()
    sources = list(_sources(args))
    failed = 0
    entries: list[dict[str, Any]] = []
    totals: Counter[Verdict] = Counter()
    for done, (label, loader) in enumerate(sources, 1):
        try:
            tree = loader()
            live = None
            if label == str(LIVE_FDT):
                # the running kernel's own view of who uses what, as evidence
                from platpass.host.live_use import live_host_use

                live = live_host_use(n.path for n in tree.devices(all=args.all))
            assessments = assess_tree(
                tree, registry, all=args.all, live=live,
                overrides=overrides_for(tree, getattr(args, "override", ())),
                groups=groups_for(tree, getattr(args, "together", ()), strict=False))
        except FirmwareError as err:
            failed += 1
            print(f"platpass: error: {err}", file=sys.stderr)
            _progress(done, len(sources), label)
            continue
        _progress(done, len(sources), label)
        log_waivers(label, assessments)
        totals.update(a.verdict for a in assessments)
        backends = ({a.node.path: live_backend(a) for a in assessments}
                    if label == str(LIVE_FDT) else {})
        if args.json:
            entries.extend(as_json(label, a, backends.get(a.node.path)) for a in assessments)
        else:
            print_table(label, assessments, out, backends)
            print(file=out)
    if args.json:
        json.dump(entries, out, indent=1)
        out.write("\n")
    else:
        summary = ", ".join(f"{totals[v]} {v.value}" for v in Verdict if totals[v])
        print(f"{len(sources) - failed} of {len(sources)} trees scanned: {summary or 'none'}",
              file=out)
    if failed:
        print(f"platpass: {failed} of {len(sources)} trees could not be read",
              file=sys.stderr)
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """The ``scan`` subcommand."""
    return scan(args)
