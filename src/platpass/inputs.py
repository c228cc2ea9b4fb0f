"""Reading what a user hands platpass, and running helper programs, without hanging or
eating memory.

Every file platpass reads on a user's say-so (a DTB, a DTS, a TOML configuration, a guest
placement record, a base DTB, a trace to replay) goes through :func:`read_input` or
:func:`open_input`:

* **regular files only** — a FIFO, a character or block device (``/dev/zero``,
  ``/dev/urandom``, a tty), a socket or a directory is refused with a one-line error, both
  before opening (so a device is not even opened) and on the opened fd (a name swapped in
  between is caught);
* **opened non-blocking** (``O_NONBLOCK | O_NOCTTY``), so a FIFO swapped in at the last
  moment cannot block the open;
* **size-capped** — the cap is checked on ``fstat`` and again while reading (a file that
  grows, or a /proc-style file that reports size 0, stops at the cap). The caps:
  :data:`MAX_DTB_BYTES` (2 MiB: arm64 Linux's own ``MAX_FDT_SIZE``; the largest real DTB
  in ``shared/dtbs`` is 121 KiB), :data:`MAX_SOURCE_BYTES` (8 MiB of DTS text),
  :data:`MAX_CONFIG_BYTES` (1 MiB of TOML or JSON record), and for line-oriented files
  (traces, which may be long) :data:`MAX_LINE_BYTES` per line.

Every helper program (``dtc``, the guest assembler) runs through :func:`run_tool`: with a
wall-clock timeout, a CPU-time limit and an address-space limit, so ``/incbin/("/dev/zero")``
or a FIFO in a DTS ends in a one-line error instead of a hang or a multi-gigabyte process.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from platpass.errors import PlatpassError

#: Largest flattened device tree accepted (arm64 Linux refuses an FDT over 2 MiB).
MAX_DTB_BYTES = 2 << 20
#: Largest device-tree source accepted.
MAX_SOURCE_BYTES = 8 << 20
#: Largest configuration (TOML) or placement record (JSON) accepted.
MAX_CONFIG_BYTES = 1 << 20
#: Longest line of a line-oriented input (a trace record is ~100 bytes).
MAX_LINE_BYTES = 64 << 10

#: Seconds a helper program may run (dtc compiles a whole board tree in milliseconds).
TOOL_TIMEOUT = 60.0
#: Address space a helper program may use.
TOOL_MEMORY = 1 << 30

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _human(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 and not size % (1 << 20) else \
        f"{size >> 10} KiB" if size >= 1 << 10 and not size % (1 << 10) else f"{size} bytes"


def check_regular(path: str | os.PathLike[str], *, limit: int, what: str,
                  error: type[PlatpassError] = PlatpassError) -> None:
    """Refuse ``path`` unless it is a regular file of at most ``limit`` bytes (for files
    another program, e.g. dtc, will read by name)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise error(f"{what} {path}: {err.strerror or err}") from err
    _check_stat(path, st, limit, what, error)


def _check_stat(path: str | os.PathLike[str], st: os.stat_result, limit: int, what: str,
                error: type[PlatpassError]) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path}: {_kind(st.st_mode)}, not a regular file")
    if st.st_size > limit:
        raise error(f"{what} {path}: {st.st_size} bytes, more than the "
                    f"{_human(limit)} accepted")


def open_input(path: str | os.PathLike[str], *, limit: int | None, what: str,
               error: type[PlatpassError] = PlatpassError) -> int:
    """An fd of ``path`` for reading: a regular file, opened without blocking, no larger
    than ``limit`` (None: any size). Raises ``error`` with a one-line reason."""
    check_regular(path, limit=limit if limit is not None else 1 << 62, what=what,
                  error=error)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise error(f"{what} {path}: {err.strerror or err}") from err
    try:
        _check_stat(path, os.fstat(fd), limit if limit is not None else 1 << 62, what,
                    error)
        os.set_blocking(fd, True)  # a regular file: reads never block anyway
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_input(path: str | os.PathLike[str], *, limit: int, what: str,
               error: type[PlatpassError] = PlatpassError) -> bytes:
    """The bytes of ``path`` (see the module doc); raises ``error`` with a one-line reason
    for anything but a regular file of at most ``limit`` bytes."""
    fd = open_input(path, limit=limit, what=what, error=error)
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            except OSError as err:
                raise error(f"{what} {path}: {err.strerror or err}") from err
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise error(f"{what} {path}: more than the {_human(limit)} accepted")
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_lines(path: str | os.PathLike[str], *, what: str,
               error: type[PlatpassError] = PlatpassError) -> IO[bytes]:
    """A binary file object of ``path`` for line-by-line reading (any file size); use
    :func:`bounded_line` on it so one line cannot eat memory."""
    fd = open_input(path, limit=None, what=what, error=error)
    return os.fdopen(fd, "rb")


def bounded_line(handle: IO[bytes], *, where: str, error: type[PlatpassError] =
                 PlatpassError, max_line: int = MAX_LINE_BYTES) -> bytes:
    """The next line of ``handle`` (b"" at the end); ``error`` for a line over
    ``max_line`` bytes."""
    line = handle.readline(max_line + 1)
    if len(line) > max_line:
        raise error(f"{where}: a line longer than {_human(max_line)}")
    return line


def _limits(memory: int, cpu: float):  # type: ignore[no-untyped-def]
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        seconds = int(cpu) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))
    return apply


def run_tool(args: Sequence[str], *, what: str, input: bytes | None = None,
             timeout: float | None = None, memory: int = TOOL_MEMORY,
             error: type[PlatpassError] = PlatpassError,
             cwd: str | os.PathLike[str] | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    """Run a helper program to completion with a timeout, a CPU-time and an address-space
    limit; its output is captured. Raises ``error`` if it cannot run or runs too long (the
    exit status is the caller's to judge). ``timeout`` defaults to :data:`TOOL_TIMEOUT`."""
    if timeout is None:
        timeout = TOOL_TIMEOUT
    try:
        return subprocess.run(list(args), input=input, capture_output=True, check=False,
                              timeout=timeout, cwd=cwd,
                              stdin=subprocess.DEVNULL if input is None else None,
                              preexec_fn=_limits(memory, timeout))
    except subprocess.TimeoutExpired as err:
        raise error(f"{what}: {Path(args[0]).name} did not finish within {timeout:.0f} s "
                    "(an input that never ends, such as a FIFO or /dev/zero?)") from err
    except OSError as err:
        raise error(f"{what}: cannot run {Path(args[0]).name}: {err}") from err


__all__ = ["MAX_CONFIG_BYTES", "MAX_DTB_BYTES", "MAX_LINE_BYTES", "MAX_SOURCE_BYTES",
           "TOOL_MEMORY", "TOOL_TIMEOUT", "bounded_line", "check_regular", "open_input",
           "read_input", "read_lines", "run_tool"]
