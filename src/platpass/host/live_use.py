"""The running kernel's own view of who uses a device (read-only sysfs), for the verdict.

On a live host the device tree says what could be used; the kernel says what is. For every
device path asked about, this reads, under a sysfs root (``/sys``; tests give a fake one):

* fw_devlink links (``class/devlink/*``: ``supplier`` and ``consumer`` symlinks and
  ``status``) whose supplier lies in the device's subtree and whose consumer does not;
* drivers bound to the devices of its children (``of_node`` inside the subtree, a ``driver``
  link), the device itself excepted;
* MTD devices (``class/mtd``) and regulators (``class/regulator``) whose device lies in the
  subtree.

Devices are placed in the tree through their ``of_node`` link (``firmware/devicetree/base``).
Nothing is written; anything unreadable is skipped (the firmware rules still apply). The
result is plain data that :func:`platpass.firmware.verdict.assess_tree` takes as ``live``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from platpass.firmware.verdict import LIVE_RULES
from platpass.host.sysfs import DT_BASE

__all__ = ["LIVE_RULES", "live_host_use"]


def _of_path(device: Path, root: Path) -> str | None:
    """The DT path of a sysfs device directory, or None."""
    try:
        target = os.path.realpath(device / "of_node")
    except OSError:
        return None
    base = os.path.realpath(root / DT_BASE)
    if target == base:
        return "/"
    if not target.startswith(base + "/"):
        return None
    return target[len(base):]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _entries(directory: Path) -> Iterator[Path]:
    try:
        yield from sorted(directory.iterdir())
    except OSError:
        return


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def live_host_use(paths: Iterable[str],
                  root: Path = Path("/sys")) -> dict[str, list[tuple[str, str]]]:
    """For each DT path in ``paths``: ``(rule, what)`` facts showing the host uses it."""
    wanted = list(dict.fromkeys(paths))
    out: dict[str, list[tuple[str, str]]] = {}

    def holders(path: str | None) -> list[str]:
        return [] if path is None else [w for w in wanted if _inside(path, w)]

    for link in _entries(root / "class" / "devlink"):
        status = _read(link / "status")
        if status in ("dormant", ""):
            continue
        supplier = _of_path(link / "supplier", root)
        consumer = _of_path(link / "consumer", root)
        for holder in holders(supplier):
            if consumer is not None and _inside(consumer, holder):
                continue
            who = consumer or os.path.basename(os.path.realpath(link / "consumer"))
            out.setdefault(holder, []).append((
                "live-consumer",
                f"{link.name} ({status}): {who} uses {supplier} (/sys/class/devlink)"))
    seen: set[str] = set()
    for bus in _entries(root / "bus"):
        for device in _entries(bus / "devices"):
            real = os.path.realpath(device)
            if real in seen:
                continue
            seen.add(real)
            node = _of_path(device, root)
            for holder in holders(node):
                if node == holder:
                    continue
                driver = device / "driver"
                if driver.exists():
                    out.setdefault(holder, []).append((
                        "live-child-driver",
                        f"{node} is bound to the host driver "
                        f"{os.path.basename(os.path.realpath(driver))} ({device.name})"))
    for cls, rule in (("mtd", "live-mtd"), ("regulator", "live-regulator")):
        for entry in _entries(root / "class" / cls):
            node = _of_path(entry / "device", root) or _of_path(entry, root)
            for holder in holders(node):
                name = _read(entry / "name")
                users = _read(entry / "num_users")
                detail = f"{entry.name}" + (f" {name!r}" if name else "") + \
                    (f", {users} users" if users else "")
                out.setdefault(holder, []).append(
                    (rule, f"{node}: /sys/class/{cls}/{detail}"))
    return out
