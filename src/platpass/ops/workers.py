"""``serve --workers N``: devices spread over several worker processes, one reactor each.

One Python reactor is one CPU. With ``N > 1`` the ``serve`` process becomes a supervisor
that serves no device itself:

* **Placement** is round-robin in plan order (device ``i`` goes to worker ``i mod N``),
  so the same command line always gives the same placement; ``status`` shows each
  device's ``worker`` index and ``worker_pid``. ``N`` is capped at the number of devices;
  ``auto`` is the number of CPUs this process may run on.
* **Listening sockets are the supervisor's.** It binds every device socket once
  (:func:`platpass.host.safepath.bind_unix_socket`: owner, mode and the directory checked,
  nothing acted on by name) and each worker serves an inherited duplicate of the fd. A
  worker that dies therefore never leaves the path missing or rebound: connections made
  while it is down wait in the socket's backlog and are accepted by its successor.
* **Restarts with bounded backoff.** A worker's death is logged once with its exit status
  and the worker is started again after 0.1 s, doubling per quick death (one within
  :data:`STABLE_AFTER` seconds of its start) up to :data:`BACKOFF_MAX`. After
  :data:`MAX_QUICK_DEATHS` quick deaths in a row it is not started again: its devices are
  reported ``"state": "failed"`` in status (their sockets stay bound, so a client's connect
  is queued, never refused with a missing path) while the other workers keep serving.
* **Status** (``--control``) is answered by the supervisor: it asks each running worker's
  private control socket (in a 0700 directory only the supervisor created) with a 1 s
  bound, and adds ``worker``, ``worker_pid`` and ``state`` (``serving``, ``restarting``
  or ``failed``) to every device.
* **Privileges** (``run_as``: ``serve --user``, ``up``'s ``user``): a worker opens its
  devices, binds its control socket and opens its saved-state directory (owned by the
  user, inside the supervisor's) as root, then drops to the user before serving. The
  supervisor stays root: it starts the workers, which open devices.
* **Shutdown**: SIGTERM/SIGINT to the supervisor is passed to every worker, which
  disconnects its clients and quiesces and releases its devices as a single ``serve``
  does; the supervisor waits for them (SIGKILL after :data:`STOP_TIMEOUT`), then removes
  the socket files it bound.

**State across a worker restart.** When a client disconnects, the device's register
state is kept for the next client (the vfio-user spec's "Client Disconnection"; see
:mod:`platpass.vfio_user.server`): its IRQ fds are closed and its DMA maps forgotten.
A restarted worker opens its devices afresh, exactly as ``serve`` does at start, so:

* the client sees a disconnect (EOF) and reconnects on the same socket path;
* real hardware (``uio``, ``vfio`` backends) keeps what the hardware keeps (an RTC's
  time, an EEPROM's content), but the device is quiesced once when serving starts, as at
  any ``serve`` start: interrupts masked, the driver's quiesce applied;
* a simulated model (``sim`` backend) lives in its worker's memory, so its state is
  saved for the next worker (:class:`_KeptState`): after each change, within
  :data:`SAVE_DELAY`, into a file in the supervisor's private directory, and restored
  before the new worker serves. Its register mirror (the memfd a client maps) is created
  by the supervisor and handed to each worker in turn, so writes a guest made through a
  mapping and no event boundary took over yet are not lost either: the new worker's first
  boundary takes them over. The device comes back as a disconnect leaves it (registers,
  FIFO contents, a running counter or countdown, an EEPROM's array), less at most the
  last :data:`SAVE_DELAY` seconds of trapped changes, and less a character that was on the
  wire (a UART's transmitted-bytes log is a host-side record, not device state).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from platpass.assembly.backends import sim_opener
from platpass.assembly.plan import DevicePlan
from platpass.assembly.serving import PR_SET_PDEATHSIG, Serving
from platpass.errors import OpsError
from platpass.host.privilege import RunAs, drop_privileges, prctl
from platpass.host.safepath import SocketFile, bind_unix_socket
from platpass.host.simulated.backend import SimulatedBackend
from platpass.reactor import EpollReactor, TimerHandle
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_user.server import VfioUserServer

log = logging.getLogger(__name__)

#: Most workers ``--workers`` accepts (each is a process with its own reactor).
MAX_WORKERS = 64
#: A worker that lived at least this long before dying was not dying "at once".
STABLE_AFTER = 10.0
#: First restart delay, doubled per quick death in a row, capped at BACKOFF_MAX.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: Quick deaths in a row after which a worker is given up and its devices reported failed.
MAX_QUICK_DEATHS = 5
#: Seconds the supervisor waits for its workers at shutdown before SIGKILL.
STOP_TIMEOUT = 10.0
#: Seconds a worker has to answer the supervisor's status question.
STATUS_TIMEOUT = 1.0
#: Seconds a changed simulated device waits before its state is saved for the next worker
#: (the most of its changes a worker's death can lose).
SAVE_DELAY = 0.02


def parse_workers(text: str) -> int:
    """``--workers`` / the TOML ``workers`` key: a count from 1 to :data:`MAX_WORKERS`, or
    ``auto`` (the CPUs this process may run on). ValueError with a one-line reason."""
    if text == "auto":
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    try:
        count = int(text, 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of workers (1-{MAX_WORKERS} or auto)"
                         ) from None
    if not 1 <= count <= MAX_WORKERS:
        raise ValueError(f"{count} workers: give 1-{MAX_WORKERS} or auto")
    return count


def placement(count: int, devices: int) -> list[int]:
    """Which worker serves each device, in plan order: round-robin, deterministic."""
    workers = max(1, min(count, devices))
    return [i % workers for i in range(devices)]


@dataclass
class _Bound:
    plan: DevicePlan
    sock: socket.socket
    socket_file: SocketFile | None  # None: an inherited fd (not ours to unlink)
    #: The file a simulated device's state is kept in between its workers (a name in the
    #: supervisor's ``states`` directory), and the memfd of its register mirror, which the
    #: supervisor holds so that what a guest wrote through a mapping outlives a worker too.
    state: str | None = None
    memfd: int | None = None


class _StateUnpickler(pickle.Unpickler):
    """Only what a model snapshot holds: builtin containers, deques, and the enums of
    platpass's own models; anything else in the file is refused."""

    _BUILTINS = frozenset({"bytearray", "set", "frozenset"})

    def find_class(self, module: str, name: str) -> Any:
        if (module == "builtins" and name in self._BUILTINS) or \
                (module == "collections" and name == "deque"):
            return super().find_class(module, name)
        if module.startswith("platpass.host.simulated.models."):
            found = super().find_class(module, name)
            if isinstance(found, type) and issubclass(found, enum.Enum):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not model state")


#: Largest saved state a worker reads back (an SPI EEPROM's array, a UART's FIFOs: far less).
MAX_STATE_BYTES = 16 << 20


class _KeptState:
    """A simulated device's state, saved where its next worker finds it.

    A model lives in its worker's memory. After every model step that may have changed it
    (a trapped write, a timer, a host-side input), its :meth:`SimulatedBackend.snapshot`
    is written to the file ``name`` of the directory ``dir_fd`` (opened before the worker
    dropped privileges: the supervisor's directory around it is root's) within
    :data:`SAVE_DELAY` (steps in between are saved
    together), replacing the previous file whole. A restarted worker restores it before
    serving, so the device comes back as a client's disconnect leaves it, less at most
    the last :data:`SAVE_DELAY` seconds of changes. A save that fails is logged once and
    saving stops; serving goes on.
    """

    def __init__(self, reactor: EpollReactor, backend: Any, dir_fd: int, name: str,
                 label: str) -> None:
        self.reactor, self.backend, self.label = reactor, backend, label
        self.dir_fd, self.name = dir_fd, name
        self._timer: TimerHandle | None = None
        self._failed = False

    def load(self) -> bool:
        """Restore the saved state, if any; True when one was restored. A file that does
        not hold this model's state is logged and ignored (power-on state)."""
        try:
            fd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        try:
            with os.fdopen(fd, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > MAX_STATE_BYTES:
                    raise ValueError(f"{size} bytes, more than {MAX_STATE_BYTES}")
                state = _StateUnpickler(f).load()
            if not isinstance(state, dict):
                raise TypeError(f"a {type(state).__name__}, not a state")
            self.backend.restore(state)
        except Exception as err:  # any bad file means power-on state
            log.warning("%s: saved state not restored (%s); the device starts at power-on "
                        "state", self.label, err)
            return False
        return True

    def watch(self) -> None:
        """Save after every change from now on."""
        self.backend.on_step = self._changed

    def _changed(self) -> None:
        if self._timer is None and not self._failed:
            self._timer = self.reactor.call_later(SAVE_DELAY, self.save)

    def save(self) -> None:
        """Write the state now (a temporary file in the same private directory, renamed
        over the previous one: a death mid-write leaves the previous state)."""
        self._timer = None
        tmp = self.name + ".tmp"
        try:
            data = pickle.dumps(self.backend.snapshot(), protocol=pickle.HIGHEST_PROTOCOL)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=self.dir_fd)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except Exception as err:  # saving must never stop serving
            self._failed = True
            log.error("%s: cannot save its state (%s); it will not survive a worker "
                      "restart", self.label, err)


@dataclass
class Worker:
    """One worker process and the devices placed on it."""

    index: int
    devices: list[_Bound]
    control: Path
    pid: int | None = None
    pidfd: int | None = None
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    failed: bool = False
    last_exit: int | None = None
    timer: TimerHandle | None = field(default=None, repr=False)

    @property
    def state(self) -> str:
        if self.failed:
            return "failed"
        return "serving" if self.pid is not None else "restarting"


class Supervisor:
    """Binds the plans' sockets, runs ``count`` workers and answers status for them all.

    ``describe(node_path)`` adds configuration facts per device and ``others()`` lists
    devices served elsewhere (as :class:`platpass.ops.control.ControlServer`'s).

    Use as a context manager: :meth:`close` stops the workers and removes what was bound.
    """

    def __init__(self, plans: list[DevicePlan], count: int, *,
                 control: str | Path | None = None, name: str = "platpass serve",
                 describe: Callable[[str], dict[str, Any]] | None = None,
                 others: Callable[[], list[dict[str, Any]]] | None = None,
                 run_as: RunAs | None = None,
                 on_open: Callable[[DevicePlan, VfioDevice], None] | None = None,
                 client_threads: int = 0) -> None:
        if not plans:
            raise OpsError("no device to place on workers")
        self.reactor = EpollReactor()
        self.name = name
        self._describe = describe
        self._others = others
        self._stopping = False
        self.run_as = run_as
        self._on_open = on_open
        self._client_threads = client_threads
        self._private = Path(tempfile.mkdtemp(prefix="platpass-workers-"))  # 0700, ours
        # Saved device states: written by workers, which may run as run_as by then. The
        # supervisor creates the directory inside its own and never reads what is in it.
        states = self._private / "states"
        os.mkdir(states, 0o700)
        if run_as is not None:
            fd = os.open(states, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fchown(fd, run_as.uid, run_as.gid)
            finally:
                os.close(fd)
        self.workers: list[Worker] = []
        self.control = None
        bound: list[_Bound] = []
        try:
            for index, plan in enumerate(plans):  # one by one: a failure releases
                bound.append(self._bind(plan))     # those already bound
                if plan.backend == "sim":
                    bound[-1].state = f"device{index}.state"
                    bound[-1].memfd = os.memfd_create(f"platpass-device{index}",
                                                      os.MFD_CLOEXEC)
            slots = placement(count, len(plans))
            for index in range(max(slots) + 1):
                self.workers.append(Worker(index, [b for b, s in zip(bound, slots, strict=True)
                                                   if s == index],
                                           self._private / f"worker{index}.ctl"))
            if control is not None:
                from platpass.ops.control import ControlServer

                self.control = ControlServer(self.reactor, VfioUserServer(self.reactor),
                                             control, name=name, others=self.devices)
        except BaseException:
            self._release(bound)
            raise
        self._bound = bound

    @staticmethod
    def _bind(plan: DevicePlan) -> _Bound:
        if plan.listen.fd is not None:
            sock = socket.socket(fileno=plan.listen.fd)
            return _Bound(plan, sock, None)
        assert plan.listen.path is not None
        options = plan.options
        sock, socket_file = bind_unix_socket(
            plan.listen.path, mode=options.mode, owner=options.owner, group=options.group,
            server_uid=options.server_uid)
        return _Bound(plan, sock, socket_file)

    # -- running ---------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker."""
        for worker in self.workers:
            self._spawn(worker)

    def serve_forever(self) -> None:
        """Supervise until SIGTERM/SIGINT (then :meth:`close` stops the workers)."""
        self.reactor.stop_on_signals()
        self.reactor.run_forever()

    def _spawn(self, worker: Worker) -> None:
        worker.timer = None
        if self._stopping:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                if self.control is not None:  # never hold a status client's connection
                    self.control.forget()
                code = self._worker_main(worker, parent)
            except BaseException:
                log.exception("worker %d failed", worker.index)
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        worker.pid = pid
        worker.started = time.monotonic()
        worker.pidfd = os.pidfd_open(pid)
        self.reactor.add_reader(worker.pidfd, lambda: self._reap(worker))
        log.info("worker %d started (pid %d): %s", worker.index, pid,
                 ", ".join(b.plan.node.path for b in worker.devices))

    def _worker_main(self, worker: Worker, parent: int) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # a kill -9 of the supervisor ends us too
        if os.getppid() != parent:
            return 0
        from platpass.ops.control import ControlServer

        with Serving(client_threads=self._client_threads) as serving:
            opened = []
            for bound in worker.devices:  # everything that needs root first
                opener = None if bound.memfd is None else \
                    sim_opener(memfd=functools.partial(os.dup, bound.memfd))
                device = serving.open(bound.plan, opener)
                if self._on_open is not None:
                    self._on_open(bound.plan, device)
                opened.append((bound, device))
            control = ControlServer(serving.reactor, serving.server, worker.control,
                                    name=f"worker {worker.index}")
            serving.control = control
            states = os.open(self._private / "states", os.O_RDONLY | os.O_DIRECTORY
                             | os.O_NOFOLLOW | os.O_CLOEXEC)
            if self.run_as is not None:
                # Its socket file is in the supervisor's directory, which a worker that
                # dropped privileges cannot write: the supervisor removes it.
                serving.control = None
                creds = drop_privileges(self.run_as)
                log.info("worker %d runs as uid %d gid %d, no capabilities, no_new_privs",
                         worker.index, creds.uids[0], creds.gids[0])
            try:
                self._serve_opened(serving, opened, states)
            finally:
                if serving.control is None:
                    control.close(unlink=False)
                os.close(states)
        return 0

    def _serve_opened(self, serving: Serving, opened: list[tuple[_Bound, VfioDevice]],
                      states: int) -> None:
        """Serve a worker's open devices, each restored from its predecessor's state where
        one was saved, until SIGTERM."""
        for bound, device in opened:
            kept = None
            restored = False
            if isinstance(device.backend, SimulatedBackend) and bound.state is not None:
                kept = _KeptState(serving.reactor, device.backend, states, bound.state,
                                  bound.plan.node.path)
                restored = kept.load()
                if restored:
                    log.info("%s: state restored from the previous worker",
                             bound.plan.node.path)
            # A restored device is served as its predecessor's clients left it, as
            # after a disconnect; anything else is quiesced as at any serve start.
            serving.server.serve_fd(bound.plan.node.path, device,
                                    os.dup(bound.sock.fileno()), bound.plan.options,
                                    quiesce=not restored)
            if kept is not None:
                if not restored:  # a successor always finds a state to start from
                    kept.save()
                kept.watch()
        serving.serve_forever()

    def _reap(self, worker: Worker) -> None:
        assert worker.pid is not None and worker.pidfd is not None
        self.reactor.remove_reader(worker.pidfd)
        os.close(worker.pidfd)
        _, status = os.waitpid(worker.pid, 0)
        pid, worker.pid, worker.pidfd = worker.pid, None, None
        worker.last_exit = os.waitstatus_to_exitcode(status)
        if self._stopping:
            return
        how = (f"was killed by signal {-worker.last_exit}" if worker.last_exit < 0
               else f"exited with status {worker.last_exit}")
        lived = time.monotonic() - worker.started
        worker.quick_deaths = worker.quick_deaths + 1 if lived < STABLE_AFTER else 1
        names = ", ".join(b.plan.node.path for b in worker.devices)
        if worker.quick_deaths > MAX_QUICK_DEATHS:
            worker.failed = True
            log.error("worker %d (pid %d) %s after %.1f s, %d quick deaths in a row: not "
                      "restarted; failed: %s", worker.index, pid, how, lived,
                      worker.quick_deaths, names)
            return
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (worker.quick_deaths - 1))
        log.warning("worker %d (pid %d) %s after %.1f s; restarting in %.1f s: %s",
                    worker.index, pid, how, lived, delay, names)
        worker.restarts += 1
        worker.timer = self.reactor.call_later(delay, lambda: self._spawn(worker))

    # -- status ----------------------------------------------------------------------

    def devices(self) -> list[dict[str, Any]]:
        """Every device's status, asked of its worker (see the module docstring)."""
        from platpass.ops.control import query

        out: list[dict[str, Any]] = []
        for worker in self.workers:
            answers: dict[str, dict[str, Any]] = {}
            if worker.pid is not None:
                try:
                    status = query(worker.control, timeout=STATUS_TIMEOUT)
                    answers = {d["name"]: d for d in status.get("devices", [])
                               if isinstance(d, dict) and isinstance(d.get("name"), str)}
                except OpsError as err:
                    log.info("worker %d did not answer status: %s", worker.index, err)
            for bound in worker.devices:
                name = bound.plan.node.path
                entry = answers.get(name)
                state = worker.state if entry is not None or worker.pid is None \
                    else "starting"
                if entry is None:
                    entry = _idle_status(bound)
                entry["socket"] = str(bound.plan.listen)
                entry.update(worker=worker.index, worker_pid=worker.pid, state=state,
                             worker_restarts=worker.restarts, worker_last_exit=worker.last_exit)
                if self._describe is not None:
                    entry.update(self._describe(name))
                out.append(entry)
        if self._others is not None:
            out.extend(self._others())
        return out

    # -- shutting down ---------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers (SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`), then the
        control socket, the bound sockets and the private directory."""
        self._stopping = True
        for worker in self.workers:
            if worker.timer is not None:
                worker.timer.cancel()
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers:
            if worker.pid is None:
                continue
            while True:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
                if pid:
                    worker.last_exit = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    log.warning("worker %d (pid %d) did not stop in %.0f s: killed",
                                worker.index, worker.pid, STOP_TIMEOUT)
                    os.kill(worker.pid, signal.SIGKILL)
                    os.waitpid(worker.pid, 0)
                    break
                time.sleep(0.02)
            if worker.pidfd is not None:
                self.reactor.remove_reader(worker.pidfd)
                os.close(worker.pidfd)
            worker.pid = worker.pidfd = None
        if self.control is not None:
            self.control.close()
            self.control = None
        self._release(self._bound)
        self._bound = []
        self.reactor.close()

    def _release(self, bound: list[_Bound]) -> None:
        for b in bound:
            if b.memfd is not None:
                os.close(b.memfd)
                b.memfd = None
            if b.socket_file is None:
                b.sock.detach()  # an inherited fd stays the caller's
                continue
            b.sock.close()
            b.socket_file.unlink()
            b.socket_file.close()
        shutil.rmtree(self._private, ignore_errors=True)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _idle_status(bound: _Bound) -> dict[str, Any]:
    """A device whose worker is not answering: no client, no counts."""
    from platpass.ops.control import idle_status

    plan = bound.plan
    return idle_status(plan.node.path, list(plan.node.compatible), str(plan.listen))


__all__ = ["BACKOFF_MAX", "MAX_QUICK_DEATHS", "MAX_WORKERS", "STABLE_AFTER", "Supervisor",
           "Worker", "parse_workers", "placement"]
