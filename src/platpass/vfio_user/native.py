"""The optional C half of the trapped-register path (``_native.c``), and whether it is used.

A trapped register costs the guest a KVM exit and one vfio-user request and reply, and in
Python the server's share of that (receive, check, call the device, pack, send) costs more
CPU than the socket itself. ``_native.c`` does that share in C: the server's loop answers
single-access REGION_READ/REGION_WRITE messages there and comes back to Python for
everything else, and the client sends one access and waits for its reply there. It decides
nothing: the device (the drivers' traps, the models) is still called in Python, and every
message it does not answer exactly as :mod:`platpass.vfio_user.protocol.region_access`
would goes to the full codec.

It is an accelerator, never a requirement (:mod:`platpass.accel`): without it, or with
``PLATPASS_NATIVE=0`` in the environment, the same paths run in Python (the tests run
both).
"""

from __future__ import annotations

from platpass import accel

#: The ``ABI`` this Python side expects of ``_native.c`` (bumped with every change of the
#: interface between them).
ABI = 2
#: What its ``Server.serve``/``answer`` report: an int for DONE (the chunk was answered)
#: and AGAIN (nothing to read), else a tuple whose first item is one of the others.
DONE, AGAIN, SLOW, FAILED, UNSENT, RECV_FAILED, CLOSED = range(7)
_CODES = {"DONE": DONE, "AGAIN": AGAIN, "SLOW": SLOW, "FAILED": FAILED, "UNSENT": UNSENT,
          "RECV_FAILED": RECV_FAILED, "CLOSED": CLOSED}


#: The C module, or None when it is not used (then :data:`UNAVAILABLE` says why).
NATIVE, UNAVAILABLE = accel.load("platpass.vfio_user._native", ABI, _CODES)


def describe() -> str:
    """One line for ``--version``-style reports and benchmarks: which path is in use."""
    return "C fast path" if NATIVE is not None else f"Python fast path ({UNAVAILABLE})"


__all__ = ["ABI", "AGAIN", "CLOSED", "DONE", "FAILED", "NATIVE", "RECV_FAILED", "SLOW",
           "UNAVAILABLE", "UNSENT", "describe"]
