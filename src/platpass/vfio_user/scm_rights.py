"""fds over an AF_UNIX socket (SCM_RIGHTS), for every socket loop of vfio-user.

The server, the client and the fuzzer send and receive descriptors the same way: a
message's fds ride on the ``sendmsg`` of its first byte, and the fds of a ``recvmsg``
are handed to the framer with the bytes they came with
(:mod:`platpass.vfio_user.protocol.connection` decides which message owns them).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable, Sequence

_FD = 4  # bytes of one int in an SCM_RIGHTS payload

AncillaryItem = tuple[int, int, bytes]


def ancillary_space(max_fds: int) -> int:
    """The ``recvmsg`` ancillary buffer size that holds ``max_fds`` descriptors."""
    return socket.CMSG_SPACE(max_fds * _FD)


def rights(fds: Sequence[int]) -> list[AncillaryItem]:
    """The ancillary data that sends ``fds`` (empty list for none)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"={len(fds)}i", *fds))]


def received_fds(ancdata: Iterable[AncillaryItem]) -> list[int]:
    """Every descriptor in ``recvmsg`` ancillary data, in order; a trailing partial int
    (a truncated control message) is ignored."""
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % _FD
            fds.extend(struct.unpack(f"={usable // _FD}i", data[:usable]))
    return fds


__all__ = ["ancillary_space", "received_fds", "rights"]
