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

from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.errors import VmmError
from platpass.firmware.model import DeviceNode
from platpass.firmware.verdict import Assessment, assess_tree
from platpass.host.simulated.board import load_board, open_sim_backend
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_user.server import VfioUserServer
from platpass.vmm.passthrough import ReactorThread


@dataclass(slots=True)
class ServedDevice:
    """One device served on a socket, with host-side handles for observation."""

    node: DeviceNode
    assessment: Assessment
    socket: Path
    device: VfioDevice
    backend: Any

    @property
    def model(self) -> Any:
        """The simulated model (host side: UART output, RTC counter...)."""
        return self.backend.model


class SimBoardServer:
    """Scan the simulated board, serve the chosen assignable devices over vfio-user.

    ``compatibles`` picks which devices to serve (first enabled node of each); refused
    devices are never served. Use as a context manager; :meth:`call` runs a function on
    the server thread (the models are not thread-safe).
    """

    def __init__(self, compatibles: tuple[str, ...] = ("arm,pl011", "arm,pl031"),
                 socket_dir: str | Path | None = None,
                 registry: DriverRegistry | None = None) -> None:
        self.tree = load_board()
        self.registry = registry if registry is not None else default_registry()
        self.assessments = assess_tree(self.tree, self.registry)
        self._tmp = None
        if socket_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="platpass-demo-")
            socket_dir = self._tmp.name
        self.socket_dir = Path(socket_dir)
        self.thread = ReactorThread("platpass-sim-server")
        self.server = self.thread.call(lambda: VfioUserServer(self.thread.reactor))
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
        node = assessment.node
        driver_cls = assessment.driver
        path = self.socket_dir / f"{node.name}.sock"

        def build() -> ServedDevice:
            backend = open_sim_backend(node, self.thread.reactor)
            driver = driver_cls(node) if isinstance(driver_cls, type) else driver_cls
            device = VfioDevice(node, driver, backend, self.thread.reactor,
                                force_trap_all=not assessment.may_map)
            self.server.serve(node.path, device, path)
            return ServedDevice(node, assessment, path, device, backend)

        return self.thread.call(build)

    def device(self, compatible: str) -> ServedDevice:
        return next(d for d in self.devices if compatible in d.node.compatible)

    def call(self, fn: Any) -> Any:
        return self.thread.call(fn)

    def close(self) -> None:
        def shutdown() -> None:
            with contextlib.suppress(Exception):
                self.server.close()
            for served in self.devices:
                with contextlib.suppress(Exception):
                    served.device.close()

        with contextlib.suppress(Exception):
            self.thread.call(shutdown)
        self.thread.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> SimBoardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
