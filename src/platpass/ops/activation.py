"""systemd socket activation and readiness, without libsystemd.

The protocol is small (sd_listen_fds(3), sd_notify(3)): the service manager passes the
listening sockets as fds ``3 .. 3 + LISTEN_FDS - 1``, says whom they are for in
``LISTEN_PID`` (fds meant for another process — a wrapper that exec'd us without updating
it — must be ignored) and names them in ``LISTEN_FDNAMES`` (colon-separated,
``FileDescriptorName=`` in the socket unit). Readiness is a datagram ``READY=1`` to
``$NOTIFY_SOCKET`` (an abstract address when it starts with ``@``).

The variables are removed from the environment once read, so children (``platpass
assign`` started by ``platpass up``) never believe the fds are theirs.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from platpass.errors import OpsError

#: First fd systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """One socket passed by the service manager.

    ``name`` is its LISTEN_FDNAMES entry (systemd's default is ``unknown``); ``path`` the
    filesystem address it is bound to (None for abstract or unbound sockets).
    """

    fd: int
    name: str
    path: str | None


def _bound_path(fd: int) -> str | None:
    sock = socket.socket(fileno=fd)
    try:
        if sock.family != socket.AF_UNIX:
            return None
        address = sock.getsockname()
    except OSError:
        return None
    finally:
        sock.detach()
    if isinstance(address, str) and address and not address.startswith("\0"):
        return address
    return None


def listen_fds(environ: MutableMapping[str, str] | None = None, *,
               unset_environment: bool = True) -> list[InheritedSocket]:
    """The sockets passed to this process, or [] when none are (or they are another
    process's). Raises OpsError for malformed variables or fds that are not open.

    The fds are marked close-on-exec: they belong to this process, not its children.
    """
    env = os.environ if environ is None else environ
    try:
        if "LISTEN_FDS" not in env:
            return []
        try:
            pid = int(env.get("LISTEN_PID", ""))
            count = int(env["LISTEN_FDS"])
        except ValueError as err:
            raise OpsError(f"socket activation: LISTEN_PID={env.get('LISTEN_PID')!r} "
                           f"LISTEN_FDS={env.get('LISTEN_FDS')!r} are not numbers") from err
        if pid != os.getpid():
            return []
        if count < 0:
            raise OpsError(f"socket activation: LISTEN_FDS={count} is negative")
        names = env.get("LISTEN_FDNAMES", "")
        name_list = names.split(":") if names else []
        if name_list and len(name_list) != count:
            raise OpsError(f"socket activation: LISTEN_FDNAMES has {len(name_list)} names "
                           f"for {count} fds")
        result = []
        for i in range(count):
            fd = LISTEN_FDS_START + i
            try:
                os.set_inheritable(fd, False)
            except OSError as err:
                raise OpsError(f"socket activation: fd {fd} (of LISTEN_FDS={count}) is not "
                               f"open: {err}") from err
            name = name_list[i] if name_list else "unknown"
            result.append(InheritedSocket(fd, name, _bound_path(fd)))
        return result
    finally:
        if unset_environment:
            for name in _VARIABLES:
                env.pop(name, None)


def match_inherited(inherited: list[InheritedSocket], *, path: str | None,
                    name: str | None) -> InheritedSocket | None:
    """The inherited socket bound to ``path`` or named ``name`` (FileDescriptorName)."""
    for candidate in inherited:
        if path is not None and candidate.path is not None and \
                os.path.abspath(candidate.path) == os.path.abspath(path):
            return candidate
    for candidate in inherited:
        if name is not None and candidate.name == name:
            return candidate
    return None


def notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``READY=1``) to the service manager; False when not run by one
    (no NOTIFY_SOCKET). Failures to send are ignored: readiness is advisory."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock, \
            contextlib.suppress(OSError):
        sock.sendto(state.encode(), address)
        return True
    return False


__all__ = ["LISTEN_FDS_START", "InheritedSocket", "listen_fds", "match_inherited", "notify"]
