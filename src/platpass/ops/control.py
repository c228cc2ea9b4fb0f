"""The control socket: what a running server is doing, for ``platpass status``.

One small AF_UNIX stream socket per server process (created 0600: only its owner — root —
may ask), served on the server's own reactor so answering never races the devices. A
request is one JSON object on one line; the reply is one JSON object on one line, then the
server closes the connection:

    -> {"request": "status"}
    <- {"ok": true, "status": {"pid": ..., "name": ..., "started": ..., "devices": [...]}}
    <- {"ok": false, "error": "unknown request 'x' (known: status)"}

Each device lists its socket, compatible, the connected client (pid/uid/gid from
SO_PEERCRED, or null), refused connections, trapped and backend access counts, refused
accesses, resets, and per IRQ index fired/delivered/spurious counts and the masked state.
A request is bounded (4 KiB) and a peer that sends nothing is dropped after 5 s; neither
can stall the devices.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from platpass.errors import OpsError, PlatpassError
from platpass.host.safepath import bind_unix_socket
from platpass.reactor import EpollReactor, ListenerBackoff
from platpass.vfio_user.server import DeviceEndpoint, VfioUserServer

log = logging.getLogger(__name__)

_UCRED = struct.Struct("=iII")
MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0
#: Connections waiting for their request at once; more are closed on accept (each holds
#: an fd for up to REQUEST_TIMEOUT).
MAX_PENDING = 16


#: The counters of a device's status, in :func:`endpoint_status`'s order.
COUNTERS = ("refused_clients", "trapped_reads", "trapped_writes", "backend_reads",
            "backend_writes", "refused_accesses", "failed_posted_writes", "resets", "dma_maps")


def idle_status(name: str, compatible: list[str], socket_name: str) -> dict[str, Any]:
    """The status of a device no process serves at the moment (its worker is restarting or
    was given up): :func:`endpoint_status`'s shape, with no client and every count 0."""
    return {"name": name, "compatible": compatible, "socket": socket_name, "client": None,
            **dict.fromkeys(COUNTERS, 0), "irqs": []}


def endpoint_status(endpoint: DeviceEndpoint, extra: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """The status of one served device (see the module docstring)."""
    device = endpoint.device
    stats = device.stats
    client = None
    if endpoint.client is not None:
        # A client that has hung up is not reported: its end-of-file is taken now (on
        # its own thread, it may not have reached the loop's lock yet).
        endpoint.client.settle()
    if endpoint.client is not None and not endpoint.client.closed:
        try:
            pid, uid, gid = _UCRED.unpack(endpoint.client.sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            client = {"pid": pid, "uid": uid, "gid": gid}
        except OSError:
            client = {"pid": None, "uid": None, "gid": None}
    irqs = []
    for line in device.irqs.lines:
        s = line.stats
        irqs.append({"index": line.index, "level": line.level, "masked": line.masked,
                     "trigger": line.trigger_fd is not None, "fired": s.fired,
                     "delivered": s.delivered, "spurious": s.spurious, "latched": s.latched,
                     "unmasks": s.unmasks})
    status: dict[str, Any] = {
        "name": endpoint.name,
        "compatible": list(device.node.compatible),
        "socket": str(endpoint.path) if endpoint.path is not None else
        f"fd {endpoint.sock.fileno()}",
        "client": client,
        "refused_clients": endpoint.refused,
        "trapped_reads": stats.trapped_reads,
        "trapped_writes": stats.trapped_writes,
        "backend_reads": stats.backend_reads,
        "backend_writes": stats.backend_writes,
        "refused_accesses": stats.refused,
        "failed_posted_writes": endpoint.failed_posted_writes,
        "resets": stats.resets,
        "dma_maps": stats.dma_maps,
        "irqs": irqs,
    }
    if extra:
        status.update(extra)
    return status


class ControlServer:
    """Answers status requests for ``server`` on ``path`` (see the module docstring).

    ``describe(endpoint)`` adds configuration facts per device (backend, guest placement);
    ``others()`` lists devices served elsewhere (``platpass assign`` children of ``up``).
    """

    def __init__(self, reactor: EpollReactor, server: VfioUserServer, path: str | Path, *,
                 name: str = "", describe: Callable[[DeviceEndpoint], dict[str, Any]]
                 | None = None, others: Callable[[], list[dict[str, Any]]] | None = None
                 ) -> None:
        self.reactor = reactor
        self.server = server
        self.path = Path(path)
        self.name = name
        self.started = time.time()
        self._describe = describe
        self._others = others
        self._pending: dict[int, tuple[socket.socket, bytearray, Any]] = {}
        try:
            self.sock, self._socket_file = bind_unix_socket(self.path, mode=0o600)
        except PlatpassError as err:
            raise OpsError(f"control socket {self.path}: {err}") from err
        self._backoff = ListenerBackoff(reactor, self.sock.fileno(), self._accept,
                                        "control")
        reactor.add_reader(self.sock.fileno(), self._accept)

    @property
    def pending(self) -> int:
        """Connections whose request has not been answered yet."""
        return len(self._pending)

    def status(self) -> dict[str, Any]:
        """The whole process's status (the ``status`` reply)."""
        devices = [endpoint_status(e, self._describe(e) if self._describe else None)
                   for e in self.server.endpoints]
        if self._others is not None:
            devices.extend(self._others())
        return {"pid": os.getpid(), "name": self.name, "started": self.started,
                "control": str(self.path), "devices": devices}

    def handle(self, request: object) -> dict[str, Any]:
        """The reply to one decoded request (pure apart from reading the counters)."""
        if not isinstance(request, dict) or not isinstance(request.get("request"), str):
            return {"ok": False, "error": "a request is a JSON object with a 'request' string"}
        if request["request"] != "status":
            return {"ok": False,
                    "error": f"unknown request {request['request']!r} (known: status)"}
        return {"ok": True, "status": self.status()}

    def _accept(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._backoff.failed(err)  # out of fds: pause, never spin
            return
        self._backoff.succeeded()
        if len(self._pending) >= MAX_PENDING:
            conn.close()  # requests are answered at once; more waiting is not a real user
            return
        conn.setblocking(False)
        fd = conn.fileno()
        timer = self.reactor.call_later(REQUEST_TIMEOUT, lambda: self._drop(fd))
        self._pending[fd] = (conn, bytearray(), timer)
        self.reactor.add_reader(fd, lambda: self._readable(fd))

    def _readable(self, fd: int) -> None:
        conn, buf, _timer = self._pending[fd]
        try:
            data = conn.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        buf += data
        if b"\n" not in buf and data and len(buf) <= MAX_REQUEST:
            return
        if len(buf) > MAX_REQUEST:
            reply: dict[str, Any] = {"ok": False, "error": f"request over {MAX_REQUEST} bytes"}
        else:
            try:
                reply = self.handle(json.loads(bytes(buf).split(b"\n", 1)[0] or b"null"))
            except ValueError as err:
                reply = {"ok": False, "error": f"request is not JSON: {err}"}
            except Exception as err:  # a status bug must not take the devices down
                log.exception("control: request failed")
                reply = {"ok": False, "error": f"internal error: {err}"}
        payload = (json.dumps(reply) + "\n").encode()
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(payload)
        except OSError as err:
            log.info("control: reply not delivered: %s", err, extra={"errno": err.errno})
        self._drop(fd)

    def _drop(self, fd: int) -> None:
        entry = self._pending.pop(fd, None)
        if entry is None:
            return
        conn, _buf, timer = entry
        timer.cancel()
        self.reactor.remove_reader(fd)
        conn.close()

    def forget(self) -> None:
        """In a child forked from the process that runs this server (a worker of
        ``serve --workers``): close the child's copies of the listening socket and of
        every connection being answered. A status client reads to EOF, so a copy of its
        connection left open in the child would hold it until the child exits. Only the
        child's fds are closed: the epoll instance is shared with the parent, so nothing
        is removed from it, and the parent goes on answering."""
        for conn, _buf, _timer in self._pending.values():
            conn.close()
        self.sock.close()

    def close(self, *, unlink: bool = True) -> None:
        """Stop answering; ``unlink=False`` leaves the socket file to the process that
        created it (an unprivileged child of ``up`` cannot remove it)."""
        for fd in list(self._pending):
            self._drop(fd)
        self._backoff.close()
        self.reactor.remove_reader(self.sock.fileno())
        self.sock.close()
        if unlink:
            try:
                self._socket_file.unlink()
            except OSError as err:  # a server that dropped privileges may not write the dir
                log.warning("cannot remove control socket %s: %s", self.path, err,
                            extra={"errno": err.errno})
        self._socket_file.close()


#: Largest status reply ``query`` reads (a status of many devices is a few KiB each).
MAX_REPLY = 16 << 20


def query(path: str | Path, request: str = "status", timeout: float = 5.0) -> dict[str, Any]:
    """Ask the server behind control socket ``path``; OpsError when it cannot answer, or
    answers something other than a status (too big, too slow in total, not JSON, not a
    JSON object with a ``status`` object)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            sock.sendall((json.dumps({"request": request}) + "\n").encode())
            chunks = []
            size = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OpsError(f"{path}: the server did not finish its answer within "
                                   f"{timeout:.0f} s")
                sock.settimeout(left)
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise OpsError(f"{path}: the reply is larger than {MAX_REPLY >> 20} MiB")
        except OSError as err:
            raise OpsError(f"{path}: no answer from the server: {err}") from err
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as err:
        raise OpsError(f"{path}: the reply is not JSON: {err}") from err
    except RecursionError as err:
        raise OpsError(f"{path}: the reply is not JSON: nested too deeply") from err
    if not isinstance(reply, dict) or not reply.get("ok"):
        error = reply.get("error") if isinstance(reply, dict) else reply
        raise OpsError(f"{path}: request refused: {str(error)[:200]}")
    status = reply.get("status")
    if not isinstance(status, dict):
        raise OpsError(f"{path}: the reply holds no status object")
    return status


__all__ = ["ControlServer", "endpoint_status", "query"]
