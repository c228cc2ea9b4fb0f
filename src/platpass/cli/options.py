"""Command-line options shared by the serving commands (``serve`` and ``assign``).

Both commands put a device on a vfio-user socket, so they take the same peer allow-list
(``--allow-uid``/``--allow-gid``, checked with SO_PEERCRED) and the same operations
options (``--control``, ``--trace``). Keeping one definition means one spelling, one help
text and one way of turning names into ids, whichever command an operator (or ``up``)
runs. ``--user`` is turned into a :class:`~platpass.host.privilege.RunAs` here; dropping
to it is the privilege code's (:mod:`platpass.host.privilege`).
"""

from __future__ import annotations

import argparse
import grp
import pwd

from platpass.errors import HostError
from platpass.host.privilege import RunAs, checked_id, parse_run_as
from platpass.vfio_user.server import SocketOptions


def uid_of(value: str) -> int:
    """A user name or number as a uid (KeyError for an unknown name, PrivilegeError for
    a number no uid can have)."""
    if value.isascii() and value.isdigit():
        return checked_id(int(value), "uid")
    return pwd.getpwnam(value).pw_uid


def gid_of(value: str) -> int:
    """A group name or number as a gid (KeyError for an unknown name, PrivilegeError for
    a number no gid can have)."""
    if value.isascii() and value.isdigit():
        return checked_id(int(value), "gid")
    return grp.getgrnam(value).gr_gid


def socket_mode(text: str) -> int:
    """``--mode``: octal permission bits 0..0777, as the TOML ``mode`` key takes (HostError
    otherwise; setuid/setgid/sticky bits mean nothing on a socket)."""
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise HostError(f"--mode {text!r}: expected octal permission bits 0..0777")
    return mode


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """``--allow-uid``/``--allow-gid``: the SO_PEERCRED allow-list of a device socket."""
    parser.add_argument("--allow-uid", action="append", default=[], metavar="UID",
                        help="only peers with this uid (repeatable; or an allowed gid)")
    parser.add_argument("--allow-gid", action="append", default=[], metavar="GID",
                        help="only peers with this gid (repeatable; or an allowed uid)")


def allow_lists(args: argparse.Namespace) -> tuple[frozenset[int], frozenset[int]]:
    """The allowed uids and gids named on the command line (empty: the socket's file
    permissions alone decide); KeyError for an unknown name."""
    return (frozenset(uid_of(u) for u in args.allow_uid),
            frozenset(gid_of(g) for g in args.allow_gid))


def add_socket_file_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mode``/``--owner``/``--group`` of the socket file; the file is born with them
    (see :func:`platpass.host.safepath.bind_unix_socket`), never changed afterwards."""
    parser.add_argument("--mode", default="0600", help="socket file mode (octal)")
    parser.add_argument("--owner", help="socket file owner (name or uid)")
    parser.add_argument("--group", help="socket file group (name or gid); the group the "
                        "server runs as is given with --user USER:GROUP")


def socket_options(args: argparse.Namespace, server_uid: int | None = None) -> SocketOptions:
    """The socket file's mode/owner/group and the peer allow-list from the command line;
    ``server_uid`` is the user a ``--user`` server runs as (ValueError for a mode that is
    not octal, KeyError for an unknown name)."""
    allow_uids, allow_gids = allow_lists(args)
    return SocketOptions(
        mode=socket_mode(args.mode),
        owner=uid_of(args.owner) if args.owner else None,
        group=gid_of(args.group) if args.group else None,
        allow_uids=allow_uids,
        allow_gids=allow_gids,
        server_uid=server_uid,
    )


def add_privilege_arguments(parser: argparse.ArgumentParser) -> None:
    """``--user USER[:GROUP]``: the user a serving command drops to once everything that
    needs root is open."""
    parser.add_argument(
        "--user", metavar="USER[:GROUP]",
        help="once the devices and sockets are open, become USER (name or uid) and GROUP "
             "(default: USER's primary group; a bare uid without a passwd entry needs it), "
             "with no capabilities and no_new_privs; refuses uid/gid 0")


def run_as_from_args(args: argparse.Namespace) -> RunAs | None:
    """Resolve ``--user`` early (before opening anything), so a typo fails first
    (PrivilegeError)."""
    text = getattr(args, "user", None)
    return parse_run_as(text) if text else None


def add_ops_arguments(parser: argparse.ArgumentParser) -> None:
    """``--control PATH`` (status socket) and ``--trace FILE`` (access record)."""
    parser.add_argument("--control", metavar="PATH",
                        help="serve platpass status on this 0600 socket (e.g. "
                             "<socket-dir>/.control)")
    parser.add_argument("--trace", metavar="FILE",
                        help="append every register access and interrupt event (JSON "
                             "lines) for platpass replay; traced devices map no pages")


__all__ = ["add_access_arguments", "add_ops_arguments", "add_privilege_arguments",
           "add_socket_file_arguments", "allow_lists", "gid_of", "run_as_from_args",
           "socket_mode", "socket_options", "uid_of"]
