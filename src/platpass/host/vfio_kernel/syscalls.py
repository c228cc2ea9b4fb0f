"""The thin shim every kernel call of the VFIO backend goes through.

Tests can hand the backend another object with the same methods; errors from the kernel are
raised as :class:`KernelCallError` keeping ``errno`` and saying which call on which object
failed, because "OSError: [Errno 22]" alone does not tell a user what to fix.
"""

from __future__ import annotations

import fcntl
import mmap
import os

from platpass.errors import HostError


class KernelCallError(HostError):
    """A system call failed; ``errno`` is the kernel's, ``call`` names what was attempted."""

    def __init__(self, err: int, call: str, target: str) -> None:
        super().__init__(f"{call} on {target} failed: {os.strerror(err)} (errno {err})")
        self.errno = err
        self.call = call
        self.target = target


class Syscalls:
    """Real system calls. ``target`` strings only feed error messages."""

    def open(self, path: str, flags: int) -> int:
        try:
            return os.open(path, flags | os.O_CLOEXEC)
        except OSError as err:
            raise KernelCallError(err.errno or 0, "open", path) from err

    def close(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError as err:
            raise KernelCallError(err.errno or 0, "close", f"fd {fd}") from err

    def ioctl(self, fd: int, request: int, arg: int | bytes | bytearray, target: str) -> int:
        """``ioctl``; a bytearray argument is filled in place, the return value is the
        ioctl's result (for bytes/bytearray arguments: 0 unless the kernel returned more)."""
        try:
            if isinstance(arg, bytearray):
                filled: int = fcntl.ioctl(fd, request, arg, True)
                return filled
            result = fcntl.ioctl(fd, request, arg)
        except OSError as err:
            name = getattr(request, "name", None)  # VfioIoctl members say what they are
            call = f"ioctl {name} ({request:#x})" if name else f"ioctl {request:#x}"
            raise KernelCallError(err.errno or 0, call, target) from err
        return result if isinstance(result, int) else 0

    def mmap(self, fd: int, length: int, offset: int, target: str) -> mmap.mmap:
        try:
            return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                             offset=offset)
        except OSError as err:
            raise KernelCallError(err.errno or 0, f"mmap at {offset:#x}", target) from err

    def pread(self, fd: int, size: int, offset: int, target: str) -> bytes:
        try:
            data = os.pread(fd, size, offset)
        except OSError as err:
            raise KernelCallError(err.errno or 0, f"pread at {offset:#x}", target) from err
        if len(data) != size:
            raise KernelCallError(5, f"short pread at {offset:#x} ({len(data)}/{size})", target)
        return data

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int,
               target: str) -> None:
        try:
            written = os.pwrite(fd, data, offset)
        except OSError as err:
            raise KernelCallError(err.errno or 0, f"pwrite at {offset:#x}", target) from err
        if written != len(memoryview(data)):
            raise KernelCallError(5, f"short pwrite at {offset:#x}", target)

    def eventfd(self) -> int:
        try:
            return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except OSError as err:
            raise KernelCallError(err.errno or 0, "eventfd", "-") from err
