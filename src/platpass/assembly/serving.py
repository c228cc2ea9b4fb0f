"""Opening planned devices and serving a set of them: one reactor, one vfio-user server,
one shutdown path (for ``serve``, ``up``, ``assign``, the KVM board and the fuzzer).

A :class:`Serving` owns what it opened. :meth:`Serving.close` always runs the same
sequence: the control socket, the server (clients disconnected, sockets removed), every
device (driver reset, backend released, failures logged so one cannot strand the others),
the trace recorder, then the reactor (when it created it).

Privilege separation (:meth:`Serving.serve_separated`): everything that needs root is done
before it is called; a child drops to the given user and serves with the fds it inherited,
while this process stays root and, once the child is gone, runs the caller's cleanup
(device reset, socket files unlinked from root's directories, host driver restored).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, cast

from platpass.assembly.backends import BackendOpener, backend_opener
from platpass.assembly.plan import DevicePlan, Export, Listen
from platpass.host.privilege import RunAs, prctl, run_separated
from platpass.host.simulated.backend import SimulatedBackend
from platpass.reactor import EpollReactor, Reactor
from platpass.vfio_device.device import VfioDevice, close_devices
from platpass.vfio_device.iommu import EmulatedIommu
from platpass.vfio_user.server import DeviceEndpoint, SocketOptions, VfioUserServer
from platpass.vfio_user.session import Limits

log = logging.getLogger(__name__)

#: linux/prctl.h: signal this process when its parent dies.
PR_SET_PDEATHSIG = 1


class Recorder(Protocol):
    """Records what traced devices see (:class:`platpass.ops.trace.TraceWriter`)."""

    def attach(self, device: VfioDevice, name: str, opened_at: float) -> None:
        """Start recording ``device`` (its backend was opened at ``opened_at``)."""

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ControlEndpoint(Protocol):
    """The status socket of a serving process (:class:`platpass.ops.control.ControlServer`)."""

    def close(self, *, unlink: bool = True) -> None: ...


def open_device(export: Export, opener: BackendOpener, reactor: Reactor, *,
                dma_deny: bool = False, trap_all: bool = False,
                recorder: Recorder | None = None) -> VfioDevice:
    """Open ``export``'s backend and build its :class:`VfioDevice`.

    No page is mapped when the assessment forbids it, when ``trap_all`` asks (replay) or
    when the device is traced (a mapped access would never be recorded). The backend is
    released again if the device cannot be built. Raises what the opener raises
    (HostError) and VfioError.
    """
    opened_at = reactor.time()
    backend = opener(export.node, reactor)
    try:
        if export.subtree and isinstance(backend, SimulatedBackend):
            # The simulated board has no real bus: it models the devices firmware puts on
            # it (a kernel backend's devices are on the real bus already).
            from platpass.host.simulated.board import populate_bus

            populate_bus(backend, export.subtree)
        device = VfioDevice(export.node, export.driver, backend, reactor,
                            EmulatedIommu(deny=dma_deny),
                            force_trap_all=export.force_trap_all or trap_all
                            or recorder is not None)
    except BaseException:
        backend.close()
        raise
    if recorder is not None:
        recorder.attach(device, export.node.path, opened_at)
    return device


#: Most clients ``serve --client-threads`` may give threads of their own.
MAX_CLIENT_THREADS = 64


class Serving:
    """Devices served over vfio-user from one reactor; a context manager that closes them.

    Without ``reactor`` it makes (and later closes) its own :class:`EpollReactor`; with one
    (the KVM board's reactor thread) it leaves that reactor to its owner.
    """

    def __init__(self, reactor: EpollReactor | None = None, *,
                 limits: Limits | None = None, client_threads: int = 0) -> None:
        self._owns_reactor = reactor is None
        self.reactor = reactor if reactor is not None else EpollReactor()
        # ``client_threads`` (serve --client-threads): the first clients are served on
        # threads of their own. Off by default: it makes one busy client's trapped
        # accesses faster, and many clients' p99 and a one-CPU interrupt slower
        # (docs/benchmarks.md).
        self.server = VfioUserServer(self.reactor, limits, client_threads=client_threads)
        self.devices: list[VfioDevice] = []
        #: node path -> why its PCI identity was chosen (plans with ``pci``).
        self.pci_accounts: dict[str, str] = {}
        #: Set before devices are opened to trace them (every traced device traps all).
        self.recorder: Recorder | None = None
        #: Set once the control socket is up; closed first at shutdown.
        self.control: ControlEndpoint | None = None

    # -- building --------------------------------------------------------------------

    def open(self, plan: DevicePlan, opener: BackendOpener | None = None) -> VfioDevice:
        """Open the planned device (see :func:`open_device`), as a PCI function when the
        plan asks (why that identity: :attr:`pci_accounts`); it is closed with the rest.
        PciIdError/PciPersonalityError when the device cannot be one."""
        device = open_device(plan.export, opener or backend_opener(plan.backend),
                             self.reactor, dma_deny=plan.dma_deny, recorder=self.recorder)
        self.devices.append(device)
        if plan.pci is None:
            return device
        from platpass.vfio_device.pci.device import as_pci_function

        pci, why = as_pci_function(device, plan.pci)
        # A PciVfioDevice wraps the device and offers its interface (not by inheritance);
        # the server, the session and close_devices take it as one.
        self.devices[-1] = cast(VfioDevice, pci)
        self.pci_accounts[plan.node.path] = why
        return self.devices[-1]

    def listen(self, name: str, device: VfioDevice, listen: Listen,
               options: SocketOptions | None = None) -> DeviceEndpoint:
        """Put ``device`` on its socket (HostError if it cannot be bound)."""
        if listen.fd is not None:
            return self.server.serve_fd(name, device, listen.fd, options)
        assert listen.path is not None
        return self.server.serve(name, device, listen.path, options)

    def add(self, plan: DevicePlan, opener: BackendOpener | None = None) -> VfioDevice:
        """Open the planned device and listen on its socket."""
        device = self.open(plan, opener)
        self.listen(plan.node.path, device, plan.listen, plan.options)
        return device

    # -- running ---------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve in this process until SIGTERM/SIGINT."""
        self.reactor.stop_on_signals()
        self.reactor.run_forever()

    def serve_separated(self, run_as: RunAs,
                        announce: Callable[[], None] | None = None) -> int:
        """Serve from a child that drops to ``run_as`` until SIGTERM/SIGINT (forwarded by
        this process); returns the child's exit code (``-signal`` if it was killed).

        This process stays root and touches nothing until the child is gone; then the
        caller's cleanup (:meth:`close` and whatever needs root) runs here, with the fds
        this process still holds. The child asks for SIGTERM when this process dies, so a
        ``kill -9`` of the root process leaves no server behind. ``announce`` runs in the
        child once it has dropped its privileges, before it serves.
        """
        monitor = os.getpid()
        if self.recorder is not None:
            self.recorder.flush()  # the child must not write this process's records again
        sys.stdout.flush()
        sys.stderr.flush()

        def serve() -> int:
            self.reactor.stop_on_signals()  # run_separated reset the handlers in this child
            # Set after the drop (a credential change clears it), then the race with an
            # early death of the parent.
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != monitor:
                return 0
            if announce is not None:
                announce()
            self.reactor.run_forever()
            # The socket files are in root's directories: the root parent removes them.
            if self.control is not None:
                self.control.close(unlink=False)
            for endpoint in self.server.endpoints:
                endpoint.path = None
            self.server.close()
            if self.recorder is not None:
                self.recorder.close()
            return 0

        return run_separated(run_as, serve, lambda _code: None)

    # -- shutting down ---------------------------------------------------------------

    def close(self) -> None:
        """The one shutdown path: control socket, server, devices (reset and released,
        failures logged), recorder, and the reactor if this object made it."""
        if self.control is not None:
            self.control.close()
            self.control = None
        self.server.close()
        close_devices(self.devices, log)
        self.devices.clear()
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        if self._owns_reactor:
            self.reactor.close()

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["PR_SET_PDEATHSIG", "ControlEndpoint", "Recorder", "Serving", "open_device"]
