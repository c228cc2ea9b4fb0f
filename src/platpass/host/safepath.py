"""Path operations that stay safe when root does them in a directory others may write.

A root process that calls ``chown(path)`` or ``chmod(path)`` after creating ``path`` can be
made to change any file of the system: another user who may write the directory replaces
the name with a symlink between the two calls, and both calls follow it. The same holds for
``open(path, "a")``, ``write_text`` on a predictable name, ``mkdir`` then ``chown``, and
``unlink`` of a name that no longer names what we created. Everything here therefore works
on file descriptors:

* a directory is opened once (:func:`open_directory`) and judged on its fd: it must be
  owned by root, by us or by the user the new file will belong to, and writable by nobody
  else (:func:`check_trusted_directory`);
* a listening socket is bound inside a private ``0700`` directory of ours, created in the
  target directory, with the final mode set by the umask at birth; its owner is set there
  (nobody can swap a name inside a directory only we can write), and only then is it
  published under its final name with ``link()``, which never follows a symlink and never
  replaces an existing name (:func:`bind_unix_socket`);
* all platpass processes serialise socket set-up and removal in one directory with
  ``flock`` on the directory fd, so two servers racing for one name cannot both bind, and
  a socket is only unlinked when the name still holds the inode we created
  (:meth:`SocketFile.unlink`);
* regular files are created or appended to with ``O_NOFOLLOW``, checked on their fd
  (:func:`open_append`, :func:`write_file_replacing`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from platpass.errors import HostError

log = logging.getLogger(__name__)

__all__ = [
    "SocketFile",
    "bind_unix_socket",
    "check_trusted_directory",
    "make_owned_directory",
    "open_append",
    "open_directory",
    "require_trusted_directory",
    "write_file_replacing",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def open_directory(path: Path) -> int:
    """An fd on directory ``path`` (HostError when it is missing or not a directory)."""
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as err:
        raise HostError(f"cannot open directory {path}: {err.strerror}") from err


def check_trusted_directory(fd: int, path: Path, owners: tuple[int, ...] = ()) -> None:
    """Refuse a directory another user could write: it must belong to root, to us or to
    one of ``owners`` (the user a file we create there will belong to), and must not be
    writable by its group (unless that group is root's) or by others."""
    info = os.fstat(fd)
    allowed = sorted({0, os.geteuid(), *owners})
    if info.st_uid not in allowed:
        raise HostError(f"{path} belongs to uid {info.st_uid}; refusing to create files "
                        f"there (use a directory owned by uid "
                        f"{' or '.join(str(u) for u in allowed)})")
    mode = stat.S_IMODE(info.st_mode)
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and info.st_gid != 0):
        raise HostError(f"{path} is writable by other users (mode {mode:04o}); refusing "
                        "to create files there (chmod go-w it, or choose another directory)")


def require_trusted_directory(path: Path, owners: tuple[int, ...] = ()) -> None:
    """:func:`check_trusted_directory` for a directory named by path (HostError when it
    is missing, not a directory, or another user could write it)."""
    fd = open_directory(path)
    try:
        check_trusted_directory(fd, path, owners)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


@dataclass(slots=True)
class SocketFile:
    """A socket file we published: its directory fd, its name there and its inode, so it
    is removed only while the name still holds what we created."""

    path: Path
    dir_fd: int
    name: str
    #: An O_PATH fd on the socket inode: holding it keeps the inode number from being
    #: reused by another socket, so comparing numbers really compares files.
    file_fd: int

    def unlink(self) -> None:
        """Remove the name if it is still our socket (OSError when we may not)."""
        with _locked(self.dir_fd):
            try:
                info = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                return
            ours = os.fstat(self.file_fd)
            if (info.st_dev, info.st_ino) != (ours.st_dev, ours.st_ino):
                log.warning("%s is no longer the socket this server created; left in place",
                            self.path, extra={"socket": str(self.path)})
                return
            os.unlink(self.name, dir_fd=self.dir_fd)

    def close(self) -> None:
        """Forget the directory and the inode (the socket file stays)."""
        for fd in (self.dir_fd, self.file_fd):
            if fd >= 0:
                os.close(fd)
        self.dir_fd = self.file_fd = -1


def _proc_path(dir_fd: int, name: str) -> str:
    # The kernel resolves /proc/self/fd/N to the directory the fd holds, so bind() and
    # connect() reach it whatever has since happened to its path.
    return f"/proc/self/fd/{dir_fd}/{name}"


def _clear_stale(dir_fd: int, path: Path) -> None:
    """Remove a socket nobody listens on at ``path``; refuse anything else there."""
    try:
        info = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise HostError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(_proc_path(dir_fd, path.name))
    except ConnectionRefusedError:
        os.unlink(path.name, dir_fd=dir_fd)  # stale socket left by a dead server
    except OSError as err:
        raise HostError(f"{path}: cannot probe existing socket: {err}") from err
    else:
        raise HostError(f"{path} is in use by a running server")
    finally:
        probe.close()


def bind_unix_socket(path: Path, *, mode: int = 0o600, owner: int | None = None,
                     group: int | None = None, server_uid: int | None = None,
                     backlog: int = 4) -> tuple[socket.socket, SocketFile]:
    """A non-blocking listening AF_UNIX socket published at ``path`` with exactly
    ``mode``/``owner``/``group``; a stale socket there is replaced, a live one or any
    other file is a HostError. The directory may belong to root, to us, to ``owner`` or
    to ``server_uid`` (the user a privilege-separated server runs as), and to no one
    else. The socket is listening before its name appears, and at no moment does the
    name carry wider permissions than requested."""
    dir_fd = open_directory(path.parent)
    try:
        check_trusted_directory(dir_fd, path.parent,
                                tuple(u for u in (owner, server_uid) if u is not None))
        with _locked(dir_fd):
            _clear_stale(dir_fd, path)
            sock, file_fd = _bind_private(dir_fd, path, mode, owner, group, backlog)
    except BaseException:
        os.close(dir_fd)
        raise
    return sock, SocketFile(path, dir_fd, path.name, file_fd)


def _bind_private(dir_fd: int, path: Path, mode: int, owner: int | None,
                  group: int | None, backlog: int) -> tuple[socket.socket, int]:
    private = f".{path.name}.{secrets.token_hex(6)}"
    try:
        os.mkdir(private, 0o700, dir_fd=dir_fd)
    except OSError as err:
        raise HostError(f"cannot create a private directory in {path.parent}: "
                        f"{err.strerror}") from err
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    pfd = -1
    try:
        pfd = os.open(private, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        info = os.fstat(pfd)
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise HostError(f"{path.parent}/{private} was replaced while in use")
        old_umask = os.umask(0o777 & ~mode)  # born with the final mode, never wider
        try:
            sock.bind(_proc_path(pfd, "s"))
        finally:
            os.umask(old_umask)
        if owner is not None or group is not None:
            os.chown("s", -1 if owner is None else owner, -1 if group is None else group,
                     dir_fd=pfd, follow_symlinks=False)
        os.chmod("s", mode, dir_fd=pfd)  # in our 0700 directory: nothing can be swapped in
        sock.listen(backlog)
        sock.setblocking(False)
        file_fd = os.open("s", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        try:
            os.link("s", path.name, src_dir_fd=pfd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        except BaseException:
            os.close(file_fd)
            raise
        return sock, file_fd
    except FileExistsError as err:
        sock.close()
        raise HostError(f"{path} appeared while this server was creating it") from err
    except OSError as err:
        sock.close()
        raise HostError(f"cannot set up {path}: {err.strerror or err}") from err
    except BaseException:
        sock.close()
        raise
    finally:
        if pfd >= 0:
            with contextlib.suppress(OSError):
                os.unlink("s", dir_fd=pfd)
            os.close(pfd)
        with contextlib.suppress(OSError):
            os.rmdir(private, dir_fd=dir_fd)


def make_owned_directory(path: Path, uid: int, gid: int, mode: int = 0o755) -> None:
    """Create ``path`` (its parents as needed) and give the new directory to ``uid:gid``
    through its fd, never by name (an existing directory is left as it is)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    parent = open_directory(path.parent)
    try:
        check_trusted_directory(parent, path.parent)
        try:
            os.mkdir(path.name, mode, dir_fd=parent)
        except FileExistsError:
            return
        fd = os.open(path.name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=parent)
        try:
            if os.fstat(fd).st_uid != os.geteuid():
                raise HostError(f"{path} was replaced while being created")
            os.fchmod(fd, mode)
            os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
    except OSError as err:
        raise HostError(f"cannot create {path}: {err.strerror}") from err
    finally:
        os.close(parent)


def open_append(path: Path, mode: int = 0o600) -> int:
    """An fd appending to regular file ``path`` (created ``mode`` if missing): never
    through a symlink, never a FIFO or device (HostError)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        raise HostError(f"cannot open {path}: {err.strerror}") from err
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HostError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def write_file_replacing(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically: written to an unpredictable name created
    ``O_EXCL`` in the same directory (through its fd), then renamed over the old name
    (rename replaces a symlink, never follows it)."""
    dir_fd = open_directory(path.parent)
    tmp = f".{path.name}.{secrets.token_hex(6)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise HostError(f"cannot write {path}: {err.strerror}") from err
    finally:
        os.close(dir_fd)
