"""The one place the guest layer runs a program: ``dtc`` (and ``fdtoverlay`` for checks).

Generated source must compile without a single warning: ``dtc``'s checks are the
independent reviewer of what the transform produced, so any line on its stderr is an error
here, reported with the source that caused it.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Sequence

from platpass.errors import GuestError
from platpass.inputs import run_tool

#: Seconds any one dtc run may take (a whole merged board tree compiles in milliseconds).
DTC_TIMEOUT = 60


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GuestError(f"{name} not found: install Debian's device-tree-compiler "
                         "(scripts/install does)")
    return path


def compile_dts(source: str, *, plugin_symbols: bool = False,
                disabled_checks: Sequence[str] = (),
                tolerated: Collection[str] = ()) -> bytes:
    """Compile DTS ``source`` to a blob; raises :class:`GuestError` on any warning or error.

    ``plugin_symbols`` adds ``-@`` (``__symbols__``/fixups, for overlays).
    ``disabled_checks`` names dtc checks that cannot hold for the kind of output (each
    caller says why). ``tolerated`` lists exact warning lines that are not ours (a base
    tree's own, see :func:`baseline_warnings`).
    """
    args = [_tool("dtc"), "-I", "dts", "-O", "dtb"]
    if plugin_symbols:
        args.append("-@")
    for check in disabled_checks:
        args += ["-W", f"no-{check}"]
    done = run_tool(args, what="dtc", input=source.encode(), timeout=DTC_TIMEOUT,
                    error=GuestError)
    lines = [line for line in done.stderr.decode(errors="replace").splitlines()
             if line.strip() and line not in tolerated]
    stderr = "\n".join(lines)
    if done.returncode != 0 or stderr:
        raise GuestError("dtc rejected the generated device tree:\n" + stderr
                         + "\n--- source ---\n" + _numbered(source))
    return done.stdout


def baseline_warnings(source: str) -> frozenset[str]:
    """The warning lines dtc prints for ``source`` alone (e.g. a decompiled base DTB, whose
    numeric phandles dtc flags). Appending to such a source keeps its line numbers, so these
    exact lines can be told apart from warnings our additions cause."""
    done = run_tool([_tool("dtc"), "-I", "dts", "-O", "dtb", "-o", "/dev/null"],
                    what="dtc", input=source.encode(), timeout=DTC_TIMEOUT, error=GuestError)
    if done.returncode != 0:
        raise GuestError("the base device tree does not compile: "
                         + done.stderr.decode(errors="replace").strip())
    return frozenset(line for line in done.stderr.decode(errors="replace").splitlines()
                     if line.strip())


def decompile_dtb(blob: bytes) -> str:
    """DTS text of a blob (``dtc -I dtb -O dts``); raises :class:`GuestError` on failure."""
    done = run_tool([_tool("dtc"), "-I", "dtb", "-O", "dts"], what="dtc", input=blob,
                    timeout=DTC_TIMEOUT, error=GuestError)
    if done.returncode != 0:
        raise GuestError("dtc could not read the device tree blob: "
                         + done.stderr.decode(errors="replace").strip())
    return done.stdout.decode()


def _numbered(source: str) -> str:
    return "\n".join(f"{i:4} {line}" for i, line in enumerate(source.splitlines(), 1))
