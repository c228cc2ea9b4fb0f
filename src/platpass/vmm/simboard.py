"""The simulated board served over vfio-user from a reactor thread of this process.

Used by ``platpass demo``, the KVM tests and the KVM benchmark: the devices live on their
own thread (as they would in a ``platpass serve`` process), the KVM client reaches them
only through their sockets, and the host side of each model (what the UART transmitted)
stays observable because it is in the same process.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platpass.assembly import DevicePlan, Listen, Serving, TreeSource, load_tree
from platpass.assembly.plan import Export
from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.errors import VmmError
from platpass.firmware.model import DeviceNode
from platpass.firmware.verdict import Assessment, assess_tree
from platpass.host.backend import Backend
from platpass.host.simulated.backend import SimulatedBackend
from platpass.vfio_device.device import VfioDevice
from platpass.vmm.passthrough import ReactorThread


@dataclass(slots=True)
class ServedDevice:
    """One device served on a socket, with host-side handles for observation."""

    node: DeviceNode
    assessment: Assessment
    socket: Path
    device: VfioDevice
    backend: Backend

    @property
    def model(self) -> Any:
        """The simulated model (host side: UART output, RTC counter...)."""
        backend = self.backend
        assert isinstance(backend, SimulatedBackend)
        return backend.model


class SimBoardServer:
    """Scan the simulated board, serve the chosen assignable devices over vfio-user.

    ``compatibles`` picks which devices to serve (first enabled node of each); refused
    devices are never served. Use as a context manager; :meth:`call` runs a function on
    the server thread (the models are not thread-safe).
    """

    def __init__(self, compatibles: tuple[str, ...] = ("arm,pl011", "arm,pl031"),
                 socket_dir: str | Path | None = None,
                 registry: DriverRegistry | None = None) -> None:
        self.tree = load_tree(TreeSource("sim"))
        self.registry = registry if registry is not None else default_registry()
        self.assessments = assess_tree(self.tree, self.registry)
        self._tmp = None
        if socket_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="platpass-demo-")
            socket_dir = self._tmp.name
        self.socket_dir = Path(socket_dir)
        self.thread = ReactorThread("platpass-sim-server")
        self.serving = self.thread.call(lambda: Serving(self.thread.reactor))
        self.server = self.serving.server
        self.devices: list[ServedDevice] = []
        try:
            for compatible in compatibles:
                self.devices.append(self._serve(compatible))
        except BaseException:
            self.close()
            raise

    def _serve(self, compatible: str) -> ServedDevice:
        assessment = next((a for a in self.assessments
                           if compatible in a.node.compatible and a.node.enabled), None)
        if assessment is None:
            raise VmmError(f"the simulated board has no enabled {compatible} device")
        if not assessment.may_assign or assessment.driver is None:
            raise VmmError(f"{assessment.node.path} is {assessment.verdict.name}: not served")
        path = self.socket_dir / f"{assessment.node.name}.sock"
        plan = DevicePlan(Export.of(assessment), "sim", Listen(path))

        def build() -> ServedDevice:
            device = self.serving.add(plan)
            return ServedDevice(plan.node, assessment, path, device, device.backend)

        return self.thread.call(build)

    def device(self, compatible: str) -> ServedDevice:
        return next(d for d in self.devices if compatible in d.node.compatible)

    def call(self, fn: Any) -> Any:
        return self.thread.call(fn)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.thread.call(self.serving.close)
        self.thread.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> SimBoardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
