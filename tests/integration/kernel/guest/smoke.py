"""Scenario ``smoke``: the guest's python imports every platpass module and pylibfdt."""

from __future__ import annotations

import importlib
import os
import pkgutil
import platform

from kcheck import check, run_steps


def imports() -> None:
    import platpass

    failed = {}
    names = ["platpass"]
    for info in pkgutil.walk_packages(platpass.__path__, "platpass."):
        if not info.name.endswith("__main__"):  # importing it would run the CLI
            names.append(info.name)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # report every module that cannot load, not just the first
            failed[name] = repr(err)
    check("smoke.platpass_imports", not failed, failed=failed, modules=len(names),
          machine=platform.machine(), kernel=os.uname().release)


def libfdt() -> None:
    import libfdt as fdt

    with open("/sys/firmware/fdt", "rb") as f:
        blob = f.read()
    tree = fdt.Fdt(blob)
    check("smoke.libfdt_reads_live_fdt", tree.totalsize() == len(blob), size=len(blob))


run_steps([imports, libfdt])
