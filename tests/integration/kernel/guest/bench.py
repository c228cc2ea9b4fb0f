"""Scenario ``bench``: ``bench/irq.py --backend uio`` on the real kernel (figures only)."""

from __future__ import annotations

import subprocess

from kcheck import check, run_steps


def irq_bench() -> None:
    for path, *params in (("/lib/modules/debian/uio.ko",),
                          ("/lib/modules/platpass/uio_pdrv_genirq.ko",),
                          ("/lib/modules/debian/vfio_virqfd.ko",),
                          ("/lib/modules/platpass/vfio.ko", "enable_unsafe_noiommu_mode=1"),
                          ("/lib/modules/platpass/vfio-platform-base.ko",),
                          ("/lib/modules/platpass/vfio-platform.ko", "reset_required=0")):
        subprocess.run(["insmod", path, *params], check=True)
    out = subprocess.run(["python3", "/platpass/bench/irq.py", "--backend", "uio",
                          "--samples", "1000"], capture_output=True, text=True, timeout=240)
    print(out.stdout, out.stderr, flush=True)
    lines = out.stdout.splitlines()
    check("bench.irq_uio", out.returncode == 0 and any("ratio" in x for x in lines),
          stdout=lines, stderr=out.stderr[-2000:])


run_steps([irq_bench])
