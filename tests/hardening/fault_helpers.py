"""Helpers shared by the fault and regression tests: real simulated devices, a backend
whose device can be "removed" at the backend boundary, and ``platpass serve`` in a
subprocess."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from platpass.assembly import Export, TreeSource, choose_exports, load_tree, open_device
from platpass.errors import HostError
from platpass.firmware.model import DeviceNode
from platpass.host.backend import Backend
from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.board import open_sim_backend
from platpass.host.simulated.clock import ManualClock
from platpass.reactor import EpollReactor, Reactor
from platpass.vfio_device.device import VfioDevice


class RemovableBackend:
    """A simulated backend whose device can be pulled out from under the server.

    After :meth:`remove`, register accesses fail with ``OSError(EIO)`` and interrupt
    control with :class:`HostError` - what a UIO backend sees once the kernel unregistered
    the device (its irqcontrol write returns EIO). Everything else is the real
    :class:`SimulatedBackend`.
    """

    def __init__(self, inner: SimulatedBackend) -> None:
        self.inner = inner
        self.removed = False

    def remove(self) -> None:
        self.removed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read(self, region: int, offset: int, size: int) -> int:
        if self.removed:
            raise OSError(errno.EIO, "device removed")
        return self.inner.read(region, offset, size)

    def write(self, region: int, offset: int, size: int, value: int) -> None:
        if self.removed:
            raise OSError(errno.EIO, "device removed")
        self.inner.write(region, offset, size, value)

    def mask_irq(self, index: int) -> None:
        if self.removed:
            raise HostError("uio0: irqcontrol write failed: [Errno 5] Input/output error")
        self.inner.mask_irq(index)

    def unmask_irq(self, index: int) -> None:
        if self.removed:
            raise HostError("uio0: irqcontrol write failed: [Errno 5] Input/output error")
        self.inner.unmask_irq(index)


def export_for(compatible: str) -> Export:
    """The ``platpass serve`` export (node, driver, traps) of the sim board's device."""
    exports, _ = choose_exports(load_tree(TreeSource("sim")), [], everything_assignable=True)
    return next(e for e in exports if compatible in e.node.compatible)


def sim_device(reactor: EpollReactor, compatible: str, *, removable: bool = False,
               manual_clock: bool = True) -> VfioDevice:
    """A served-as-by-``platpass serve`` device of the sim board (optionally removable)."""

    def opener(node: DeviceNode, reactor: Reactor) -> Backend:
        backend: Any = open_sim_backend(node, reactor,
                                        clock=ManualClock(1000.0) if manual_clock else None)
        return RemovableBackend(backend) if removable else backend

    return open_device(export_for(compatible), opener, reactor)


def open_fds(pid: int | str = "self") -> set[int]:
    """Open fds of a process (``/proc/<pid>/fd``)."""
    return {int(name) for name in os.listdir(f"/proc/{pid}/fd")}


def start_serve(socket_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """``python3 -m platpass serve --sim --socket-dir DIR``, returned once it is ready.

    stderr goes to ``DIR/serve.log`` (a pipe nobody drains would block the server's
    logging); stdout is read up to "ready".
    """
    socket_dir.mkdir(parents=True, exist_ok=True)
    with open(socket_dir / "serve.log", "a") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "platpass", "serve", "--sim", "--socket-dir",
             str(socket_dir), *extra], stdout=subprocess.PIPE, stderr=log_file, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "ready":
            return proc
    proc.wait(10)
    raise AssertionError(f"serve did not start: {''.join(lines)}"
                         f"{(socket_dir / 'serve.log').read_text()}")


def stop_serve(proc: subprocess.Popen[str], socket_dir: Path) -> str:
    """SIGTERM (SIGKILL after 10 s); returns what the server logged."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return (socket_dir / "serve.log").read_text()
