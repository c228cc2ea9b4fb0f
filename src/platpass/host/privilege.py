"""Giving up root once the device and its sockets are open.

A platpass server needs root for exactly three things, all done before it serves anyone:
binding the device to UIO/VFIO through sysfs, opening ``/dev/uioN`` or the VFIO group and
device fds (and mapping the registers), and creating its sockets under a root-owned
directory (with their owner and mode). After that it only reads and writes fds it already
holds: ``mmap``'d registers, eventfds, the listening and the accepted sockets. None of that
is checked against the caller's credentials again, so the process can become an ordinary
user and keep **no capability at all**; a bug in the protocol code then yields an
unprivileged process, not root.

:func:`drop_privileges` does it in the one order that cannot leave a way back:

1. ``PR_SET_NO_NEW_PRIVS``: no later ``execve`` (of a setuid binary, or one with file
   capabilities) can grant anything;
2. the capability bounding set is emptied (``PR_CAPBSET_DROP``, needs the CAP_SETPCAP we
   still have) and the ambient set cleared, so nothing can be regained even by a mistake
   in step 5;
3. supplementary groups (``setgroups``), then the gid (``setresgid``: real, effective and
   saved), then the uid (``setresuid``) last, because changing the uid first would take
   away the right to change the groups;
4. when ``keep_caps`` names capabilities, ``PR_SET_KEEPCAPS`` is set before the uid change
   and ``capset`` then makes exactly those permitted and effective (the kernel clears the
   effective set on the change);
5. verification: the real/effective/saved ids and the groups are the target's, ``setuid(0)``
   and ``setgid(0)`` fail, and ``/proc/self/status`` shows the permitted, effective,
   inheritable, ambient and bounding sets equal to ``keep_caps`` and ``NoNewPrivs: 1``.
   Any mismatch raises :class:`PrivilegeError`; the caller must then exit, not serve.

``prctl`` and ``capset`` are per-thread, so the process must be single-threaded when it
drops (checked through ``/proc/self/task``); the uid/gid calls go through glibc, which
applies them to every thread anyway. ``prctl``/``capset`` are called through :mod:`ctypes`
(the standard library has no binding for them).

``serve`` calls :func:`drop_privileges` after its sockets listen (``--user USER[:GROUP]``
is parsed by :mod:`platpass.cli.options`). A server that has dropped its
privileges can no longer write sysfs: whatever must be undone as root afterwards (putting a
device back on its host driver) belongs to a process that kept them. For that case
:func:`run_separated` forks: the child drops and serves, the parent stays root, does
nothing but forward SIGTERM/SIGINT and wait, then runs the root-only cleanup.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import grp
import os
import pwd
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from platpass.errors import HostError

# linux/prctl.h
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# linux/capability.h
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: Capability numbers by name (linux/capability.h).
CAPABILITIES: dict[str, int] = {name: number for number, name in enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"))}


class PrivilegeError(HostError):
    """Privileges could not be dropped as asked (the process must not go on serving)."""


@dataclass(frozen=True, slots=True)
class RunAs:
    """Whom to become: uid, primary gid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    spec: str

    def __str__(self) -> str:
        return f"{self.spec} (uid {self.uid}, gid {self.gid}, groups {list(self.groups)})"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the kernel says the current process is (``/proc/self/status``)."""

    uids: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    groups: tuple[int, ...]
    cap_inheritable: int
    cap_permitted: int
    cap_effective: int
    cap_bounding: int
    cap_ambient: int
    no_new_privs: bool

    @classmethod
    def of(cls, pid: int | str = "self") -> Credentials:
        """Read them for ``pid`` (default: this process)."""
        fields: dict[str, str] = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()

        def ids(key: str) -> tuple[int, int, int, int]:
            a, b, c, d = (int(v) for v in fields[key].split())
            return a, b, c, d

        return cls(
            uids=ids("Uid"), gids=ids("Gid"),
            groups=tuple(int(g) for g in fields.get("Groups", "").split()),
            cap_inheritable=int(fields["CapInh"], 16),
            cap_permitted=int(fields["CapPrm"], 16),
            cap_effective=int(fields["CapEff"], 16),
            cap_bounding=int(fields["CapBnd"], 16),
            cap_ambient=int(fields.get("CapAmb", "0"), 16),
            no_new_privs=fields.get("NoNewPrivs", "0") == "1",
        )


def capability_number(cap: str | int) -> int:
    """``"CAP_NET_BIND_SERVICE"``, ``"net_bind_service"`` or 10 -> 10 (PrivilegeError if
    unknown)."""
    if isinstance(cap, int):
        if 0 <= cap <= last_capability():
            return cap
        raise PrivilegeError(f"capability {cap} does not exist on this kernel")
    name = cap.upper()
    if not name.startswith("CAP_"):
        name = "CAP_" + name
    if name not in CAPABILITIES:
        raise PrivilegeError(f"unknown capability {cap!r}")
    return CAPABILITIES[name]


def last_capability() -> int:
    """The highest capability number the running kernel knows."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


#: Largest uid/gid a file or process can have ((uid_t)-1 means "leave unchanged").
MAX_ID = 2**32 - 2


def checked_id(value: int, kind: str = "id") -> int:
    """``value`` if it can be a uid/gid; PrivilegeError (a one-line reason) otherwise."""
    if not 0 <= value <= MAX_ID:
        raise PrivilegeError(f"{kind} {value} is out of range (0..{MAX_ID})")
    return value


def resolve_run_as(user: str | int, group: str | int | None = None) -> RunAs:
    """Turn ``user`` (name or number) and ``group`` (name or number; default: the user's
    primary group) into ids. A named user gets its supplementary groups from the group
    database (as a login would); a bare uid with no passwd entry gets none. Raises
    PrivilegeError for unknown names, a numeric uid with neither an entry nor a group, or
    root (uid or gid 0: dropping to root drops nothing).
    """
    spec = str(user) if group is None else f"{user}:{group}"
    entry: pwd.struct_passwd | None
    try:
        if isinstance(user, int) or (str(user).isascii() and str(user).isdigit()):
            uid = checked_id(int(user), "uid")
            try:
                entry = pwd.getpwuid(uid)
            except KeyError:
                entry = None
        else:
            entry = pwd.getpwnam(str(user))
            uid = entry.pw_uid
    except KeyError:
        raise PrivilegeError(f"unknown user {user!r}") from None
    if group is None:
        if entry is None:
            raise PrivilegeError(f"uid {uid} has no passwd entry: give its group too "
                                 f"({uid}:GID)")
        gid = entry.pw_gid
    elif isinstance(group, int) or (str(group).isascii() and str(group).isdigit()):
        gid = checked_id(int(group), "gid")
    else:
        try:
            gid = grp.getgrnam(str(group)).gr_gid
        except KeyError:
            raise PrivilegeError(f"unknown group {group!r}") from None
    if uid == 0 or gid == 0:
        raise PrivilegeError(f"refusing to 'drop' to {spec}: uid/gid 0 keeps root's "
                             "access; name an unprivileged user")
    groups = (gid,) if entry is None else tuple(sorted(set(
        os.getgrouplist(entry.pw_name, gid))))
    if 0 in groups:
        raise PrivilegeError(f"{spec} is a member of group 0 (root); choose another user")
    return RunAs(uid, gid, groups, spec)


def parse_run_as(text: str) -> RunAs:
    """``USER[:GROUP]`` as given to ``--user``."""
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise PrivilegeError(f"--user {text!r}: expected USER or USER:GROUP")
    return resolve_run_as(user, group or None)


# ---------------------------------------------------------------- kernel calls (ctypes)

class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong)
        lib.prctl.restype = ctypes.c_int
        lib.capset.argtypes = (ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
        lib.capset.restype = ctypes.c_int
        _libc = lib
    return _libc


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """``prctl(2)``; PrivilegeError carrying the errno on failure."""
    result = _c().prctl(option, arg2, arg3, arg4, arg5)
    if result < 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}, {arg2}) failed: {os.strerror(err)}")
    return int(result)


def _capset(mask: int) -> None:
    """Make ``mask`` this thread's permitted and effective set (inheritable: empty)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in (0, 1):
        bits = (mask >> (32 * word)) & 0xFFFFFFFF
        data[word].effective = data[word].permitted = bits
        data[word].inheritable = 0
    if _c().capset(ctypes.byref(header), data) < 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset({mask:#x}) failed: {os.strerror(err)}")


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


# ---------------------------------------------------------------- the drop

def drop_privileges(user: str | int | RunAs, group: str | int | None = None, *,
                    keep_caps: Iterable[str | int] = ()) -> Credentials:
    """Become ``user`` (and ``group``), keeping only ``keep_caps`` (default: none), for
    good; returns the verified credentials.

    Call it once every device, fd and socket the process needs is open, while the process
    is single-threaded. Raises PrivilegeError if the process is not root (and not already
    that user), is multi-threaded, if any step fails, or if the result can still regain
    root; the process must then stop (a half-dropped process is not safe to serve with).
    """
    target = user if isinstance(user, RunAs) else resolve_run_as(user, group)
    keep = 0
    for cap in keep_caps:
        keep |= 1 << capability_number(cap)
    if os.geteuid() != 0:
        if os.getresuid() == (target.uid,) * 3 and os.getresgid() == (target.gid,) * 3 \
                and not keep:
            prctl(PR_SET_NO_NEW_PRIVS, 1)
            return _verify(target, 0, bounding=False)  # cannot empty it without CAP_SETPCAP
        raise PrivilegeError(f"cannot switch to {target}: not running as root "
                             f"(uid {os.getuid()})")
    if _thread_count() != 1:
        raise PrivilegeError(f"cannot drop privileges with {_thread_count()} threads "
                             "running: prctl and capset would only change one of them")
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    for cap in range(last_capability() + 1):
        if not keep & (1 << cap):
            prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if keep:
        prctl(PR_SET_KEEPCAPS, 1)
    try:
        os.setgroups(list(target.groups))
        os.setresgid(target.gid, target.gid, target.gid)
        os.setresuid(target.uid, target.uid, target.uid)
    except OSError as err:
        raise PrivilegeError(f"switching to {target} failed: {err}") from err
    if keep:
        _capset(keep)
        prctl(PR_SET_KEEPCAPS, 0)
    return _verify(target, keep)


def _verify(target: RunAs, keep: int, *, bounding: bool = True) -> Credentials:
    """Check the kernel's view of the result; PrivilegeError on any difference."""
    problems = []
    if os.getresuid() != (target.uid,) * 3:
        problems.append(f"uids are {os.getresuid()}")
    if os.getresgid() != (target.gid,) * 3:
        problems.append(f"gids are {os.getresgid()}")
    if tuple(sorted(os.getgroups())) != tuple(sorted(target.groups)):
        problems.append(f"groups are {os.getgroups()}")
    for name, call in (("setuid", os.setuid), ("setgid", os.setgid)):
        try:
            call(0)
        except PermissionError:
            continue
        except OSError as err:
            if err.errno == errno.EPERM:
                continue
            problems.append(f"{name}(0) failed oddly: {err}")
        else:
            problems.append(f"{name}(0) succeeded: root can be regained")
    creds = Credentials.of()
    sets = {"permitted": creds.cap_permitted, "effective": creds.cap_effective}
    if bounding:
        sets["bounding"] = creds.cap_bounding
    for name, value in sets.items():
        if value != keep:
            problems.append(f"{name} capabilities are {value:#x}, wanted {keep:#x}")
    if creds.cap_inheritable or creds.cap_ambient:
        problems.append(f"inheritable {creds.cap_inheritable:#x} / ambient "
                        f"{creds.cap_ambient:#x} capabilities remain")
    if not creds.no_new_privs:
        problems.append("no_new_privs is not set")
    if problems:
        raise PrivilegeError(f"privileges not dropped to {target}: {'; '.join(problems)}")
    return creds


# ---------------------------------------------------------------- privilege separation

def run_separated(run_as: RunAs, serve: Callable[[], int],
                  cleanup: Callable[[int], None]) -> int:
    """Serve unprivileged, clean up as root; returns the server's exit code.

    Forks once everything is open. The child drops to ``run_as`` (exit 70 if that fails;
    it never serves with privileges it was told to drop), runs ``serve()`` and exits with
    its result. The parent keeps root but touches nothing: it forwards SIGTERM and SIGINT
    to the child, waits for it, then calls ``cleanup(exit_code)`` (e.g. reset the device
    and give it back to its host driver), whether the child exited cleanly, failed or was
    killed (a killed child's code is ``-signal``). The parent's pid is the one to record
    and to signal: it outlives the server and always cleans up.
    """
    signals = (signal.SIGTERM, signal.SIGINT)
    # Blocked across the fork: a SIGTERM arriving before the parent's forwarding handler
    # is in place must be forwarded, not kill the parent and orphan the server uncleaned.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    if pid == 0:  # the server
        code = 70
        try:
            for signum in signals:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            drop_privileges(run_as)
            code = int(serve() or 0)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # reported; the child never runs the parent's cleanup
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in signals}
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)  # pending ones are forwarded now
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    code = os.waitstatus_to_exitcode(status)
    cleanup(code)
    return code


__all__ = [
    "CAPABILITIES",
    "Credentials",
    "PrivilegeError",
    "RunAs",
    "capability_number",
    "drop_privileges",
    "parse_run_as",
    "resolve_run_as",
    "run_separated",
]
