"""Every outside program the test suite runs, and the Debian package that provides it.

``tests/conftest.py`` stops the run before the first test when one is missing (naming it
and its package), instead of letting a test fail deep inside a fixture; ``scripts/install
--test`` runs this file last (``python tests/needed_tools.py``) to check what it installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

#: program -> Debian package (scripts/install --test installs every one of them).
TOOLS: dict[str, str] = {
    "dtc": "device-tree-compiler",
    "fdtoverlay": "device-tree-compiler",
    "fdtput": "device-tree-compiler",
    "as": "binutils",
    "ld": "binutils",
    "objcopy": "binutils",
    "cc": "gcc",  # scripts/build-native: the C fast path (bench/mmio.py's C server too)
    "qemu-system-aarch64": "qemu-system-arm",
    "qemu-aarch64": "qemu-user",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "aarch64-linux-gnu-strip": "binutils-aarch64-linux-gnu",
    "make": "make",
    "perl": "perl",
    "bc": "bc",
    "cpio": "cpio",
    "xz": "xz-utils",
    "gzip": "gzip",
    "tar": "tar",
    "python3": "python3",
    "dpkg-deb": "dpkg",
    "apt-get": "apt",
    "apt-cache": "apt",
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "taskset": "util-linux",
    "dmesg": "util-linux",
    "systemd-analyze": "systemd",
    "groff": "groff-base",
}


def missing() -> list[str]:
    """One line per missing tool (or missing set-up), empty when everything is there."""
    lines = [f"{tool} (Debian package {package})" for tool, package in TOOLS.items()
             if shutil.which(tool) is None]
    if shutil.which("dpkg") is not None:
        foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                                 text=True, check=False).stdout.split()
        if "arm64" not in foreign:
            lines.append("the arm64 architecture in dpkg/apt (dpkg --add-architecture arm64 && "
                         "apt-get update): the kernel harness downloads arm64 debs")
    return lines


def report(lines: list[str]) -> str:
    return ("tools the test suite needs are missing:\n"
            + "".join(f"  - {line}\n" for line in lines)
            + "run scripts/install --test (as root) to install them")


if __name__ == "__main__":
    absent = missing()
    if absent:
        sys.exit(report(absent))
    print(f"all {len(TOOLS)} tools the tests run are present: {' '.join(TOOLS)}")
