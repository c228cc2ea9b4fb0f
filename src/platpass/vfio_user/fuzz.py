"""Structural fuzzing of the vfio-user server: the codec, the framing, the session dispatch.

Why a structural fuzzer: a random byte stream is refused by the first header check, so it
never reaches the code that matters (argsz and count checks, fd ownership, IRQ and DMA
state). Every case here starts from a *seed corpus* of valid messages produced by our own
codec for every command, and mutates their structure: header fields (size, command,
flags, msg_id, error), payload fields (argsz, counts, indices, offsets set to boundary
values), fds (added to messages that take none, of the wrong kind, too many, removed),
truncation, oversizing, and the way the stream is cut into receive chunks (fds arriving
with a later chunk than their message's first byte).

Three targets, one set of invariants:

* ``direct``: bytes and fds fed straight into :class:`~.protocol.connection.Connection`
  and :class:`~.session.Session` over real simulated-board devices (no sockets): the
  fastest, >100 000 messages in seconds.
* ``server``: the in-process :class:`~.server.VfioUserServer` over real AF_UNIX sockets
  and the real reactor, so the socket fast path and SCM_RIGHTS handling are exercised.
* ``external``: ``python3 -m platpass serve --sim`` in a subprocess, attacked through its
  socket files (see :func:`run_external`).

Invariants checked on every message (a violation is a :class:`Finding`):

* no exception escapes, and no "unexpected failure" is logged (the server's catch-alls
  log at ERROR; a record there means a bug was swallowed);
* every command that asks for a reply gets exactly one, with its msg_id and command, the
  REPLY type, and either an errno with no payload or a payload the client codec decodes;
  unsolicited replies and no_reply commands get nothing; otherwise the connection was
  closed deliberately (an unresynchronisable stream, or VERSION refused);
* every fd a message carried is closed once it is handled, and after each case the
  process holds exactly the fds it held before (``/proc/self/fd``);
* a refused message leaves the device unchanged: its register mirror, IRQ configuration
  (trigger/mask/unmask fds, masked, pending edge, source state) and DMA map table, and its
  write/reset/map counters.

Every case is generated from ``Random(case_seed)``, so a finding is replayed with
``--replay CASE_SEED``. Run by hand with ``python3 -m platpass.vfio_user.fuzz --seconds
3600`` (or ``python3 bench/fuzz.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import random
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from platpass.errors import RemoteProtocolError, VfioUserError
from platpass.reactor import EpollReactor
from platpass.vfio_device.device import VfioDevice
from platpass.vfio_device.uapi import DmaMapFlags, IrqSetFlags
from platpass.vfio_user.protocol import messages as m
from platpass.vfio_user.protocol.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Message,
    Rejected,
)
from platpass.vfio_user.protocol.header import (
    HEADER,
    HEADER_SIZE,
    Command,
    Header,
    HeaderFlags,
    MessageType,
)
from platpass.vfio_user.scm_rights import ancillary_space, received_fds, rights
from platpass.vfio_user.session import Limits, Reply, Session

log = logging.getLogger(__name__)

#: What the fuzzer negotiates at the start of each case (write_multiple on, so
#: REGION_WRITE_MULTI reaches its handler).
NEGOTIATE = m.Version(0, 1, {"max_msg_fds": 8, "max_data_xfer_size": 1 << 20,
                             "write_multiple": True, "max_dma_maps": 64, "pgsizes": 4096})
#: What a case may negotiate: mostly the above; sometimes the specification's defaults
#: (one fd per message, no write_multiple) or a client that takes no fds at all (regions
#: are then reported without MMAP).
HELLOS = (NEGOTIATE.encode(),) * 6 + (m.Version(0, 1, {}).encode(),
                                     m.Version(0, 1, has_json=False).encode(),
                                     m.Version(0, 1, {"max_msg_fds": 0}).encode())

_U32_EDGES = (0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 20, 24, 31, 32, 33, 0x7F, 0x80, 0xFF, 0x100,
              0xFFF, 0x1000, 0x1001, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFE, 0xFFFF_FFFF)
_U64_EDGES = (0, 1, 0xFFC, 0x1000, 0x10_0000, 0xFFFF_FFFF, 1 << 32, 1 << 63,
              0xFFFF_FFFF_FFFF_F000, 0xFFFF_FFFF_FFFF_FFFF)
_FLAG_VALUES = (0, 0, 0, 0, int(HeaderFlags.NO_REPLY), int(MessageType.REPLY),
                int(HeaderFlags.ERROR), 2, 0xF, 0x40, 0x8000_0000, 0xFFFF_FFFF,
                int(MessageType.REPLY | HeaderFlags.ERROR))
#: Kinds of fd a message may carry: the right one (eventfd for SET_IRQS, memfd for
#: DMA_MAP) and wrong ones.
FD_KINDS = ("eventfd", "memfd", "pipe")
#: A message whose handling costs more CPU time than this is a finding (a small message
#: must not buy a large amount of work: the first bug this fuzzer found was one). CPU
#: time of the handling thread, not wall time: being preempted on a busy machine is not
#: work the message bought.
SLOW_MESSAGE = 0.5


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True, slots=True)
class Seed:
    """A valid request built by our codec: its command, payload and the fds it takes."""

    name: str
    command: int
    payload: bytes
    fds: tuple[str, ...] = ()


def seed_corpus(region_size: int = 0x1000) -> tuple[Seed, ...]:
    """Valid requests for every command (and the server-to-client and unknown ones)."""
    s = IrqSetFlags
    ev = ("eventfd",)

    def irqs(name: str, flags: int, count: int = 1, data: bytes = b"",
             fds: tuple[str, ...] = ()) -> Seed:
        return Seed(name, Command.DEVICE_SET_IRQS,
                    m.SetIrqs(20 + len(data), s(flags), 0, 0, count, data).encode(), fds)

    def read(offset: int, count: int) -> Seed:
        return Seed(f"read {offset:#x}+{count}", Command.REGION_READ,
                    m.RegionRead(offset, 0, count).encode())

    def write(offset: int, data: bytes) -> Seed:
        return Seed(f"write {offset:#x}+{len(data)}", Command.REGION_WRITE,
                    m.RegionWrite(offset, 0, len(data), data).encode())

    last = region_size - 4
    return (
        Seed("version", Command.VERSION, NEGOTIATE.encode()),
        Seed("version bare", Command.VERSION, m.Version(0, 1, has_json=False).encode()),
        Seed("dma map", Command.DMA_MAP,
             m.DmaMap(32, DmaMapFlags(3), 0, 0x10_0000, 0x2000).encode(), ("memfd",)),
        Seed("dma map no fd", Command.DMA_MAP,
             m.DmaMap(32, DmaMapFlags(1), 0, 0x20_0000, 0x1000).encode()),
        Seed("dma unmap", Command.DMA_UNMAP, m.DmaUnmap(24, 0, 0x10_0000, 0x2000).encode()),
        Seed("dma unmap all", Command.DMA_UNMAP,
             m.DmaUnmap(24, m.DMA_UNMAP_FLAG_ALL, 0, 0).encode()),
        Seed("device info", Command.DEVICE_GET_INFO, m.DeviceInfo(16).encode()),
        Seed("region info", Command.DEVICE_GET_REGION_INFO,
             m.RegionInfoRequest(32, 0).encode()),
        Seed("region info caps", Command.DEVICE_GET_REGION_INFO,
             m.RegionInfoRequest(256, 0).encode()),
        Seed("region io fds", Command.DEVICE_GET_REGION_IO_FDS,
             m.RegionIoFdsRequest(16, 0, 0, 0).encode()),
        Seed("irq info", Command.DEVICE_GET_IRQ_INFO, m.IrqInfo(16, 0, 0, 0).encode()),
        irqs("trigger eventfd", s.DATA_EVENTFD | s.ACTION_TRIGGER, fds=ev),
        irqs("unmask eventfd", s.DATA_EVENTFD | s.ACTION_UNMASK, fds=ev),
        irqs("mask eventfd", s.DATA_EVENTFD | s.ACTION_MASK, fds=ev),
        irqs("trigger teardown", s.DATA_EVENTFD | s.ACTION_TRIGGER),
        irqs("mask", s.DATA_NONE | s.ACTION_MASK),
        irqs("unmask", s.DATA_NONE | s.ACTION_UNMASK),
        irqs("loopback", s.DATA_NONE | s.ACTION_TRIGGER),
        irqs("disable", s.DATA_NONE | s.ACTION_TRIGGER, count=0),
        irqs("bool trigger", s.DATA_BOOL | s.ACTION_TRIGGER, data=b"\x01"),
        irqs("bool mask", s.DATA_BOOL | s.ACTION_MASK, data=b"\x01"),
        read(0, 4), read(0x18, 4), read(0xFE0, 4), read(last, 4), read(1, 1), read(2, 2),
        read(0, 8), read(3, 5), read(0, 64),
        write(0, b"\x41\0\0\0"), write(4, b"\x01\0\0\0"), write(8, b"\xff\0\0\0"),
        write(0x24, b"\x10\0\0\0"), write(0x30, b"\x01\x03\0\0"), write(0x38, b"\x7f\0\0\0"),
        write(0x400, b"\xff\0\0\0"), write(0xC00, b"\x51\xac\xc0\x1a"), write(1, b"\x02"),
        write(6, b"\x03\x00"), write(2, b"\x01\x02\x03"),
        Seed("write multi", Command.REGION_WRITE_MULTI, m.RegionWriteMulti((
            m.SingleWrite(4, 0, 4, b"\x05\0\0\0"), m.SingleWrite(0x38, 0, 4, b"\x01\0\0\0"),
        )).encode()),
        Seed("reset", Command.DEVICE_RESET, b""),
        Seed("feature", Command.DEVICE_FEATURE, struct.pack("=II", 16, 0) + bytes(8)),
        Seed("dma read", Command.DMA_READ, m.DmaRead(0x10_0000, 8).encode()),
        Seed("dma write", Command.DMA_WRITE, m.DmaWrite(0x10_0000, 4, b"abcd").encode()),
        Seed("mig read", Command.MIG_DATA_READ, bytes(16)),
        Seed("mig write", Command.MIG_DATA_WRITE, bytes(16)),
        Seed("unknown", 0x7FFF, b"\0" * 8),
    )


# --------------------------------------------------------------------------- cases


@dataclass(slots=True)
class WireMessage:
    """One mutated message: bytes as sent, the fds to attach (kinds), and whether its
    size field is honest (a dishonest one desynchronises the stream)."""

    data: bytes
    fds: tuple[str, ...]
    honest: bool
    origin: str


@dataclass(slots=True)
class Case:
    """A generated case: whether to negotiate first, the messages, how to cut the
    stream, and whether to stop halfway through the last message."""

    negotiate: bool
    #: The VERSION payload sent first when ``negotiate``.
    hello: bytes
    messages: list[WireMessage]
    #: Per message: sizes of the chunks it is sent in (sum = its length).
    splits: list[list[int]]
    #: Attach fds to the chunk *after* the one holding the message's first byte.
    late_fds: list[bool]
    cut_last: bool


def _mutate_payload(rng: random.Random, payload: bytearray) -> None:
    if not payload:
        payload.extend(rng.randbytes(rng.choice((1, 4, 8, 16))))
        return
    what = rng.randrange(6)
    if what == 0:  # a u32 field to a boundary value
        at = rng.randrange(0, max(len(payload) - 3, 1), 4) if len(payload) >= 4 else 0
        if at + 4 <= len(payload):
            struct.pack_into("=I", payload, at, rng.choice(_U32_EDGES))
    elif what == 1:  # a u64 field
        if len(payload) >= 8:
            at = rng.randrange(0, len(payload) - 7, 4)
            struct.pack_into("=Q", payload, at, rng.choice(_U64_EDGES))
    elif what == 2:  # flip a byte
        at = rng.randrange(len(payload))
        payload[at] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(256)
    elif what == 3:  # truncate
        del payload[rng.randrange(len(payload)):]
    elif what == 4:  # extend
        payload.extend(rng.randbytes(rng.choice((1, 3, 4, 8, 24, 100))))
    else:  # argsz (the first u32 of most payloads) off by a little
        if len(payload) >= 4:
            (argsz,) = struct.unpack_from("=I", payload)
            argsz = (argsz + rng.choice((-8, -1, 1, 4, 64))) & 0xFFFF_FFFF
            struct.pack_into("=I", payload, 0, argsz)


def generate_case(rng: random.Random, corpus: Sequence[Seed], limits: Limits) -> Case:
    """A case of 1-8 messages, each a seed with 0-3 structural mutations."""
    messages: list[WireMessage] = []
    for _ in range(rng.randint(1, 8)):
        seed = rng.choice(corpus)
        msg_id = rng.randrange(0x10000)
        command = seed.command
        flags = 0
        error = 0
        payload = bytearray(seed.payload)
        fds = list(seed.fds)
        size_delta: int | None = None
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
            what = rng.randrange(10)
            if what <= 2:
                _mutate_payload(rng, payload)
            elif what == 3:
                command = rng.choice((0, 1, 14, 19, 20, 0xFFFF, rng.randrange(0x10000),
                                      *(int(c) for c in Command)))
            elif what == 4:
                flags = rng.choice(_FLAG_VALUES)
                error = rng.choice((0, 0, errno.EINVAL, 0xFFFF_FFFF))
            elif what == 5:  # add fds (of any kind, possibly too many)
                fds.extend(rng.choice(FD_KINDS)
                           for _ in range(rng.choice((1, 1, 2, 3, limits.max_msg_fds + 1))))
            elif what == 6:
                fds = []
            elif what == 7:  # fds of the wrong kind
                fds = [rng.choice(FD_KINDS) for _ in fds]
            elif what == 8:  # a dishonest size field
                size_delta = rng.choice((-1, 1, -8, 16, -HEADER_SIZE - len(payload) + 8))
            else:  # oversized: bigger than the server accepts
                size_delta = limits.max_message_size + rng.choice((1, 4096)) - HEADER_SIZE \
                    - len(payload)
        size = HEADER_SIZE + len(payload)
        honest = True
        if size_delta is not None:
            size = max(0, min(size + size_delta, 0xFFFF_FFFF))
            honest = size == HEADER_SIZE + len(payload)
        data = HEADER.pack(msg_id, command & 0xFFFF, size, flags, error) + bytes(payload)
        messages.append(WireMessage(data, tuple(fds), honest, seed.name))
    splits: list[list[int]] = []
    late: list[bool] = []
    for message in messages:
        n = len(message.data)
        cuts: list[int] = []
        if n > 1 and rng.random() < 0.15:
            points = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(1, 3))))
            cuts = [b - a for a, b in zip([0, *points], [*points, n], strict=True)]
        splits.append(cuts or [n])
        late.append(len(cuts) > 1 and bool(message.fds) and rng.random() < 0.3)
    return Case(negotiate=rng.random() > 0.05, hello=rng.choice(HELLOS),
                messages=messages, splits=splits,
                late_fds=late, cut_last=rng.random() < 0.05)


def open_fd(kind: str) -> int:
    """A fresh fd of ``kind`` (the fuzzer hands it over with a message)."""
    if kind == "eventfd":
        return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    if kind == "memfd":
        fd = os.memfd_create("platpass-fuzz", os.MFD_CLOEXEC)
        os.ftruncate(fd, 0x2000)
        return fd
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    os.close(write_end)
    return read_end


def _chunks(case: Case) -> Iterator[tuple[bytes, tuple[str, ...], bool]]:
    """(bytes, fd kinds, last-of-case) for each receive chunk of ``case``."""
    count = len(case.messages)
    for index, (message, cuts) in enumerate(zip(case.messages, case.splits, strict=True)):
        data = message.data
        if case.cut_last and index == count - 1:
            cut = max(1, len(data) // 2)
            data, cuts = data[:cut], [cut]
        pos = 0
        fd_chunk = 1 if case.late_fds[index] and len(cuts) > 1 else 0
        for number, length in enumerate(cuts):
            kinds = message.fds if number == fd_chunk else ()
            yield data[pos:pos + length], kinds, index == count - 1 and number == len(cuts) - 1
            pos += length


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True, slots=True)
class Finding:
    """An invariant that did not hold, with what is needed to replay it."""

    target: str
    case_seed: int
    what: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.target} case {self.case_seed}] {self.what}: {self.detail}"


@dataclass(slots=True)
class FuzzReport:
    """Counts of one run."""

    target: str
    messages: int = 0
    cases: int = 0
    replies: int = 0
    error_replies: int = 0
    closes: int = 0
    fds_sent: int = 0
    seconds: float = 0.0
    errnos: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        top = ", ".join(f"{name} {n}" for name, n in self.errnos.most_common(6))
        return (f"{self.target}: {self.messages} messages in {self.cases} cases, "
                f"{self.seconds:.1f} s ({self.rate:,.0f} msg/s); {self.replies} replies "
                f"({self.error_replies} errors: {top}); {self.closes} deliberate closes; "
                f"{self.fds_sent} fds sent; {len(self.findings)} findings")


class _ErrorRecords(logging.Handler):
    """Collects ERROR records from platpass loggers: the catch-alls log a swallowed bug
    there, so any record is a finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _watch_errors() -> Iterator[_ErrorRecords]:
    root = logging.getLogger("platpass")
    handler = _ErrorRecords()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # refusals log at INFO: keep them cheap
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def open_fds() -> set[int]:
    """This process's open fds."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def device_state(device: VfioDevice) -> tuple[object, ...]:
    """What a refused message must not change: register mirror, IRQ configuration, DMA
    map table and the device's write/reset/map counters."""
    backend: Any = device.backend
    memfd = getattr(backend, "memfd", None)
    registers = os.pread(memfd, backend.regions[0].size, 0) if memfd is not None else b""
    lines = tuple((line.trigger_fd, line.unmask_fd, line.mask_fd, line.masked,
                   line.pending_edge, line.source_enabled) for line in device.irqs.lines)
    stats = device.stats
    return (registers, lines, tuple(device.iommu.mappings), stats.backend_writes,
            stats.trapped_writes, stats.resets, stats.dma_maps, stats.dma_unmaps)


def _closed(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as err:
        return err.errno == errno.EBADF
    return False


def check_reply(header: Header, reply: Reply | Message | None) -> str | None:
    """Why ``reply`` is not a correct answer to a request with ``header`` (None: fine)."""
    if header.is_reply or header.no_reply:
        if reply is not None and not (isinstance(reply, Reply) and reply.close_after):
            return "a reply was sent to an unsolicited reply or a no_reply command"
        return None
    if reply is None:
        return f"no reply to {header}"
    got = reply.header
    if (got.msg_id, got.command) != (header.msg_id, header.command):
        return f"reply {got} does not answer {header}"
    if not got.is_reply or got.no_reply:
        return f"reply header has flags {got.flags:#x}"
    payload = reply.payload
    if got.is_error:
        if not got.error or payload:
            return f"error reply with errno {got.error} and {len(payload)} payload bytes"
        return None
    if got.error:
        return f"success reply carries errno {got.error}"
    try:
        m.decode_reply(got.command, payload)
    except RemoteProtocolError as err:
        return f"success reply does not decode: {err}"
    return None


# --------------------------------------------------------------------------- devices


def sim_devices(reactor: EpollReactor) -> list[VfioDevice]:
    """Every assignable device of the simulated board, on a manual clock (registers only
    change when a message changes them) and with the traps ``platpass serve`` uses."""
    from platpass.assembly import TreeSource, choose_exports, load_tree, open_device, sim_opener
    from platpass.host.simulated.clock import ManualClock

    exports, _ = choose_exports(load_tree(TreeSource("sim")), [], everything_assignable=True)
    opener = sim_opener(lambda: ManualClock(1000.0))
    devices = []
    for export in exports:
        device = open_device(export, opener, reactor)
        device.open()
        devices.append(device)
    return devices


# --------------------------------------------------------------------------- direct


class DirectTarget:
    """Connection + Session over real devices, no sockets (see the module docstring)."""

    name = "direct"

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.reactor = EpollReactor()
        self.devices = sim_devices(self.reactor)

    def close(self) -> None:
        for device in self.devices:
            device.close()
        self.reactor.close()

    def run_case(self, case_seed: int, case: Case, report: FuzzReport,
                 fail: Callable[[str, str], None]) -> None:
        rng = random.Random(case_seed)
        device = rng.choice(self.devices)
        session = Session(device, self.limits)
        framer = Connection(max_message_size=self.limits.max_message_size,
                            max_fds=self.limits.max_msg_fds)
        alive = True

        def drain() -> bool:
            """Handle every complete event; False once the connection is over."""
            while True:
                try:
                    event = framer.next_event()
                except RemoteProtocolError:
                    report.closes += 1
                    return False
                if event is NEED_DATA:
                    return True
                if isinstance(event, ConnectionClosed):
                    return False
                assert isinstance(event, Message | Rejected)
                report.messages += 1
                before = device_state(device)
                started = time.thread_time()
                reply = session.handle(event)
                took = time.thread_time() - started
                if took > SLOW_MESSAGE:
                    fail("slow message", f"{event.header} took {took * 1e3:.0f} ms")
                for fd in event.fds:
                    if not _closed(fd):
                        fail("fd kept open", f"fd {fd} of {event.header} not closed")
                why = check_reply(event.header, reply)
                if why:
                    fail("bad reply", why)
                if reply is not None:
                    report.replies += 1
                    if reply.header.is_error:
                        report.error_replies += 1
                        report.errnos[errno.errorcode.get(reply.header.error, "?")] += 1
                if (reply is None and event.header.is_reply) or (
                        reply is not None and reply.header.is_error):
                    after = device_state(device)
                    if after != before:
                        fail("refused message changed the device",
                             f"{event.header}: {_diff(before, after)}")
                if reply is not None and reply.close_after:
                    report.closes += 1
                    return False

        try:
            if case.negotiate:
                framer.receive_data(Header(0, Command.VERSION,
                                           HEADER_SIZE + len(case.hello), 0).encode()
                                    + case.hello)
                alive = drain()
            for data, kinds, _last in _chunks(case):
                fds = [open_fd(kind) for kind in kinds]
                report.fds_sent += len(fds)
                if not alive:
                    for fd in fds:  # never read: the kernel would close them with the socket
                        os.close(fd)
                    continue
                framer.receive_data(data, fds)
                alive = drain()
            if alive:
                framer.receive_data(b"")  # EOF
                drain()
        finally:
            framer.discard()
            device.client_gone()


def _diff(before: tuple[object, ...], after: tuple[object, ...]) -> str:
    names = ("registers", "irq lines", "dma maps", "backend writes", "trapped writes",
             "resets", "dma maps made", "dma unmaps")
    parts = []
    for name, old, new in zip(names, before, after, strict=True):
        if old != new:
            if isinstance(old, bytes) and isinstance(new, bytes):
                at = next(i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b)
                parts.append(f"{name} differ first at {at:#x}")
            else:
                parts.append(f"{name} {old!r} -> {new!r}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- server


class ServerTarget:
    """The in-process server over real sockets: every message goes through
    ``ClientConnection`` (fast path included) and the reactor."""

    name = "server"

    def __init__(self, limits: Limits | None = None) -> None:
        from platpass.vfio_user.server import VfioUserServer

        self.limits = limits or Limits()
        self.reactor = EpollReactor()
        self.devices = sim_devices(self.reactor)
        self.server = VfioUserServer(self.reactor, self.limits)
        self._dir = tempfile.TemporaryDirectory(prefix="platpass-fuzz-")
        self.endpoints = [
            self.server.serve(f"dev{i}", device, Path(self._dir.name) / f"dev{i}.sock")
            for i, device in enumerate(self.devices)]

    def close(self) -> None:
        self.server.close()
        for device in self.devices:
            device.close()
        self.reactor.close()
        self._dir.cleanup()

    def _pump(self) -> None:
        for _ in range(200):
            if not self.reactor.run_once(0):
                return

    def run_case(self, case_seed: int, case: Case, report: FuzzReport,
                 fail: Callable[[str, str], None]) -> None:
        rng = random.Random(case_seed)
        index = rng.randrange(len(self.devices))
        device, endpoint = self.devices[index], self.endpoints[index]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        framer = Connection(max_message_size=1 << 24, max_fds=16)
        try:
            sock.connect(str(endpoint.path))
            sock.setblocking(False)
            self._pump()
            if endpoint.client is None:
                fail("not accepted", "the server did not take a client on a free device")
                return
            if case.negotiate:
                body = case.hello
                sock.sendall(Header(0, Command.VERSION, HEADER_SIZE + len(body), 0).encode()
                             + body)
                self._pump()
                _receive(sock, framer)
            last = len(case.messages) - 1
            for index, (message, cuts, late) in enumerate(
                    zip(case.messages, case.splits, case.late_fds, strict=True)):
                if case.cut_last and index == last:  # half a message, then disconnect
                    half = max(1, len(message.data) // 2)
                    self._send(sock, WireMessage(message.data[:half], message.fds, False,
                                                 message.origin), [half], False, report)
                    report.messages += 1
                    self._pump()
                    break
                before = device_state(device)
                sent_ok = self._send(sock, message, cuts, late, report)
                self._pump()
                replies, closed = _receive(sock, framer)
                for reply in replies:  # fds the server sent us (a region's memfd) are ours
                    for fd in reply.fds:
                        os.close(fd)
                report.messages += 1
                header = Header(*HEADER.unpack_from(message.data))
                if not sent_ok or closed:
                    report.closes += 1
                    break
                if not message.honest:
                    break  # the stream is out of step now: the case ends here
                answer = replies[0] if replies else None
                why = check_reply(header, answer)
                if why and not (header.command == Command.VERSION and answer is not None
                                and answer.header.is_error):
                    fail("bad reply", f"{why} ({message.origin})")
                for reply in replies:
                    report.replies += 1
                    if reply.header.is_error:
                        report.error_replies += 1
                        report.errnos[errno.errorcode.get(reply.header.error, "?")] += 1
                if len(replies) > 1:
                    fail("extra replies", f"{len(replies)} replies to {header}")
                if (answer is None and header.is_reply) or (
                        answer is not None and answer.header.is_error):
                    after = device_state(device)
                    if after != before:
                        fail("refused message changed the device",
                             f"{header} ({message.origin}): {_diff(before, after)}")
        finally:
            sock.close()
            framer.discard()
            self._pump()
            # The server sees the EOF asynchronously; give it a moment before calling a
            # client that is still held a finding.
            self.reactor.run_until(lambda: endpoint.client is None, 2.0)
            if endpoint.client is not None:
                fail("client kept", "the server still holds a closed client after 2 s")

    @staticmethod
    def _send(sock: socket.socket, message: WireMessage, cuts: list[int], late: bool,
              report: FuzzReport) -> bool:
        fds = [open_fd(kind) for kind in message.fds]
        report.fds_sent += len(fds)
        try:
            pos = 0
            fd_chunk = 1 if late and len(cuts) > 1 else 0
            for number, length in enumerate(cuts):
                chunk = message.data[pos:pos + length]
                pos += length
                if number == fd_chunk and fds:
                    sent = sock.sendmsg([chunk], rights(fds))
                    chunk = chunk[sent:]
                while chunk:
                    try:
                        sent = sock.send(chunk)
                    except BlockingIOError:
                        select.select([], [sock], [], 1.0)
                        continue
                    chunk = chunk[sent:]
        except (BrokenPipeError, ConnectionResetError):
            return False
        finally:
            for fd in fds:
                os.close(fd)  # ours; the server got its own copies
        return True


def _receive(sock: socket.socket, framer: Connection) -> tuple[list[Message], bool]:
    """Everything the server sent so far, and whether it closed the connection."""
    closed = False
    while True:
        try:
            data, anc, flags, _ = sock.recvmsg(1 << 20, ancillary_space(16))
        except BlockingIOError:
            break
        except ConnectionResetError:
            closed = True
            break
        fds = received_fds(anc)
        framer.receive_data(data, fds, fds_truncated=bool(flags & socket.MSG_CTRUNC))
        if not data:
            closed = True
            break
    out: list[Message] = []
    while True:
        event = framer.next_event()
        if isinstance(event, Message):
            out.append(event)
            continue
        if isinstance(event, ConnectionClosed):
            closed = True
        break
    return out, closed


# --------------------------------------------------------------------------- runner


def run(target: DirectTarget | ServerTarget, *, messages: int | None = None,
        seconds: float | None = None, seed: int = 0,
        replay: Sequence[int] = (), stop_on_finding: bool = False) -> FuzzReport:
    """Fuzz ``target`` until ``messages`` were sent or ``seconds`` passed (whichever comes
    first); ``replay`` runs exactly those case seeds instead."""
    if messages is None and seconds is None and not replay:
        raise ValueError("give messages, seconds or replay")
    corpus = seed_corpus()
    report = FuzzReport(target.name)
    start = time.monotonic()
    deadline = start + seconds if seconds is not None else float("inf")
    # Finalise what earlier code in this process left unreachable (a test's unclosed
    # socket in a reference cycle) before the snapshot: its fd closing later, when the
    # collector happens to run mid-fuzz, is not the server's doing.
    gc.collect()
    baseline = open_fds()
    seeds: Iterator[int] = iter(replay) if replay else (
        seed * 1_000_003 + n for n in range(1 << 62))
    with _watch_errors() as errors:
        for case_seed in seeds:
            if not replay and ((messages is not None and report.messages >= messages)
                               or time.monotonic() >= deadline):
                break
            found: list[Finding] = []

            def fail(what: str, detail: str, case_seed: int = case_seed,
                     found: list[Finding] = found) -> None:
                found.append(Finding(target.name, case_seed, what, detail))

            case = generate_case(random.Random(case_seed ^ 0x5EED), corpus, target.limits)
            try:
                target.run_case(case_seed, case, report, fail)
            except Exception as err:  # the invariant "no exception escapes"
                fail("exception escaped", f"{type(err).__name__}: {err}")
            report.cases += 1
            for record in errors.records:
                fail("error logged", record.getMessage() + (
                    f" ({record.exc_info[1]!r})" if record.exc_info else ""))
            errors.records.clear()
            now_open = open_fds()
            if now_open != baseline:
                leaked = now_open - baseline
                fail("fd leak", f"fds {sorted(leaked)} left open" if leaked
                     else f"fds {sorted(baseline - now_open)} closed by mistake")
                baseline = now_open
            report.findings.extend(found)
            if found and stop_on_finding:
                break
    report.seconds = time.monotonic() - start
    return report


# --------------------------------------------------------------------------- external


@dataclass(slots=True)
class _ExternalDevice:
    path: Path
    #: Register offsets whose reads have no side effects and that do not move on their
    #: own (measured at start): the state compared around rejected messages.
    stable: tuple[int, ...] = ()


def _server_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _connect(path: Path, patience: float = 10.0) -> Any:
    """A fresh negotiated client, retrying while the server finishes with the last one
    (it refuses a second client until it has seen the first one's EOF; a loaded machine
    may delay that)."""
    from platpass.errors import VfioError
    from platpass.vfio_user.client import VfioUserClient

    last: Exception | None = None
    deadline = time.monotonic() + patience
    pause = 0.002
    while time.monotonic() < deadline:
        try:
            return VfioUserClient.connect(path, timeout=5.0)
        except (VfioUserError, VfioError) as err:
            last = err
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    raise RuntimeError(f"{path}: no well-behaved client could connect in {patience} s: "
                       f"{last}")


def _snapshot(device: _ExternalDevice) -> tuple[int, ...]:
    client = _connect(device.path)
    try:
        return tuple(client.read(0, offset, 4) for offset in device.stable)
    finally:
        client.close()


def start_server(socket_dir: Path) -> subprocess.Popen[str]:
    """``python3 -m platpass serve --sim --socket-dir DIR``, once it printed ready.

    Its stderr goes to ``DIR/serve.log``, not a pipe: the server logs every refusal it
    sees at WARNING, and a pipe nobody drains would fill and block it.
    """
    log_file = open(socket_dir / "serve.log", "w")  # noqa: SIM115 - the child keeps it
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "platpass", "serve", "--sim", "--socket-dir",
             str(socket_dir)], stdout=subprocess.PIPE, stderr=log_file, text=True)
    finally:
        log_file.close()
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    proc.kill()
    proc.wait()
    raise RuntimeError(f"platpass serve did not start: {(socket_dir / 'serve.log').read_text()}")


def _stable_offsets(path: Path, compatible: str) -> tuple[int, ...]:
    """Side-effect-free 4-byte registers of the model that do not change by themselves."""
    from platpass.host.simulated.board import load_board, model_for
    from platpass.host.simulated.clock import ManualClock

    node = next(n for n in load_board().devices() if compatible in n.compatible)
    model = model_for(node, ManualClock(0.0))
    width = model.reg_width
    return tuple(o for o in model.mirror_offsets
                 if width == 4 and not model.read_has_side_effects(o, 4))


def _record_finding(report: FuzzReport, target: str, case_seed: int, what: str,
                    detail: str) -> None:
    report.findings.append(Finding(target, case_seed, what, detail))


def run_external(*, seconds: float, seed: int = 0, socket_dir: Path | None = None
                 ) -> FuzzReport:
    """Attack ``platpass serve --sim`` from outside through its socket files.

    Each case connects a raw socket to one device, negotiates (mostly), sends mutated
    messages one by one (fds via SCM_RIGHTS, sometimes only half of the last one before
    disconnecting) and reads what comes back. Around every case whose replies were all
    errors, a fresh well-behaved client reads the device's stable registers: they must not
    have changed. At the end every device must still serve a fresh client and the server
    must hold as many fds as it did before the first case (``/proc/<pid>/fd``).
    """
    from platpass.host.simulated.board import load_board

    report = FuzzReport("external")
    owned = socket_dir is None
    tmp = tempfile.TemporaryDirectory(prefix="platpass-xfuzz-") if owned else None
    directory = Path(tmp.name) if tmp is not None else socket_dir
    assert directory is not None
    proc = start_server(directory)
    limits = Limits()
    corpus = seed_corpus()
    start = time.monotonic()
    try:
        by_name = {f"{n.name}.sock": n for n in load_board().devices()}
        devices = []
        for path in sorted(directory.glob("*.sock")):
            node = by_name.get(path.name)
            compatible = node.compatible[0] if node is not None else ""
            devices.append(_ExternalDevice(path, _stable_offsets(path, compatible)
                                           if node is not None else ()))
        # Registers that move on their own (the PL031 counter) are not compared.
        first = [_snapshot(d) for d in devices]
        time.sleep(1.1)
        for device, old, new in zip(devices, first, [_snapshot(d) for d in devices],
                                    strict=True):
            device.stable = tuple(o for o, a, b in zip(device.stable, old, new, strict=True)
                                  if a == b)
        time.sleep(0.05)
        fds_before = _server_fds(proc.pid)
        deadline = start + seconds
        n = 0
        while time.monotonic() < deadline:
            case_seed = seed * 1_000_003 + n
            n += 1
            rng = random.Random(case_seed)
            device = rng.choice(devices)
            case = generate_case(random.Random(case_seed ^ 0x5EED), corpus, limits)
            try:
                before = _snapshot(device)
                all_refused = _external_case(
                    device.path, case, report,
                    partial(_record_finding, report, "external", case_seed))
                report.cases += 1
                after = _snapshot(device) if all_refused else before
            except RuntimeError as err:  # no well-behaved client got through
                report.findings.append(Finding("external", case_seed, "device unusable",
                                               str(err)))
                break
            finally:
                if proc.poll() is not None:
                    report.findings.append(Finding("external", case_seed, "server died",
                                                   f"exit {proc.returncode}"))
            if proc.returncode is not None:
                break
            if all_refused and after != before:
                changed = [hex(o) for o, a, b in
                           zip(device.stable, before, after, strict=True) if a != b]
                report.findings.append(Finding(
                    "external", case_seed, "refused messages changed the device",
                    f"{device.path.name}: registers {changed}"))
        for device in devices:
            try:
                _snapshot(device)  # every device still serves a well-behaved client
            except RuntimeError as err:
                report.findings.append(Finding("external", -1, "device unusable", str(err)))
        for _ in range(100):  # the server handles the last disconnects asynchronously
            if _server_fds(proc.pid) <= fds_before:
                break
            time.sleep(0.02)
        fds_after = _server_fds(proc.pid)
        if fds_after != fds_before:
            report.findings.append(Finding("external", -1, "server fd count changed",
                                           f"{fds_before} -> {fds_after}"))
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        stderr = (directory / "serve.log").read_text()
        if tmp is not None:
            tmp.cleanup()
    if "Traceback" in stderr:
        report.findings.append(Finding("external", -1, "traceback in server stderr",
                                       stderr[-2000:]))
    report.seconds = time.monotonic() - start
    return report


def _external_case(path: Path, case: Case, report: FuzzReport,
                   fail: Callable[[str, str], None]) -> bool:
    """Run one case against the server; True when every reply was an error.

    The connection is first confirmed accepted (the server refuses a second client until
    it has seen the last one's EOF): with the case's VERSION, or for a case that does not
    negotiate, a DEVICE_GET_INFO that must be refused with EINVAL. From then on, an
    honest command that asks for a reply and gets none is a finding (``fail``), unless
    the server said it would close (VERSION refused).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    framer = Connection(max_message_size=1 << 24, max_fds=16)
    all_refused = True
    try:
        deadline = time.monotonic() + 10.0
        while True:
            sock.connect(str(path))
            sock.settimeout(2.0)
            if case.negotiate:
                probe = Header(0, Command.VERSION, HEADER_SIZE + len(case.hello), 0).encode() \
                    + case.hello
            else:
                info = m.DeviceInfo(16).encode()
                probe = Header(0, Command.DEVICE_GET_INFO, HEADER_SIZE + len(info),
                               0).encode() + info
            sock.sendall(probe)
            answer = _await_replies(sock, framer, 1)
            if answer is not None:
                break
            sock.close()  # refused: the server had not yet let go of the last client
            framer = Connection(max_message_size=1 << 24, max_fds=16)
            if time.monotonic() > deadline:
                fail("never accepted", f"{path.name}: no reply to a first message in 10 s")
                return False
            time.sleep(0.005)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        for reply in answer:
            for fd in reply.fds:
                os.close(fd)
        if not case.negotiate and answer[0].header.error != errno.EINVAL:
            fail("unnegotiated command answered", f"{answer[0].header}")
        if case.negotiate and answer[0].header.is_error:
            return False  # VERSION refused: the server closes; nothing more to test
        sock.setblocking(False)
        last = len(case.messages) - 1
        may_close = False
        for index, (message, cuts, late) in enumerate(
                zip(case.messages, case.splits, case.late_fds, strict=True)):
            if case.cut_last and index == last:
                half = max(1, len(message.data) // 2)
                message = WireMessage(message.data[:half], message.fds, False, message.origin)
                cuts = [half]
            if not ServerTarget._send(sock, message, cuts, late, report):
                # A dishonest size may end the stream while the message is still going out.
                if message.honest and not may_close:
                    fail("closed without reason", f"send failed ({message.origin})")
                report.closes += 1
                return False
            report.messages += 1
            header = Header(*HEADER.unpack_from(message.data)) \
                if len(message.data) >= HEADER_SIZE else None
            # The server answers everything but replies and no_reply messages (a message
            # whose type is neither command nor reply gets EINVAL).
            expect = (message.honest and header is not None and not header.is_reply
                      and not header.no_reply and len(message.data) <= limits_max())
            if not expect:
                all_refused = False  # cannot tell what happened; no state comparison
                if not message.honest:
                    return all_refused  # out of step: disconnect
                # A refused VERSION closes even when no reply was asked for.
                may_close = may_close or (header is not None
                                          and header.command == Command.VERSION)
                continue
            assert header is not None
            replies = _await_replies(sock, framer, 1)
            if replies is None:
                if not may_close:
                    fail("no reply", f"{header} ({message.origin}) got no reply; "
                         "the connection ended or timed out")
                report.closes += 1
                return False
            for reply in replies:
                report.replies += 1
                for fd in reply.fds:
                    os.close(fd)
                why = check_reply(header, reply)
                if why:
                    fail("bad reply", f"{why} ({message.origin})")
                if reply.header.is_error:
                    report.error_replies += 1
                    report.errnos[errno.errorcode.get(reply.header.error, "?")] += 1
                    may_close = may_close or header.command == Command.VERSION
                else:
                    all_refused = False
        return all_refused
    except OSError as err:
        fail("socket error", f"{path.name}: {err}")
        report.closes += 1
        return False
    finally:
        sock.close()
        framer.discard()


def limits_max() -> int:
    return Limits().max_message_size


def _await_replies(sock: socket.socket, framer: Connection, count: int
                   ) -> list[Message] | None:
    """Wait (up to 2 s) for ``count`` replies; None if the server closed the socket."""
    out: list[Message] = []
    deadline = time.monotonic() + 2.0
    while len(out) < count:
        event = framer.next_event()
        if isinstance(event, Message):
            out.append(event)
            continue
        if isinstance(event, ConnectionClosed | Rejected):
            return None
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return None
        try:
            data, anc, flags, _ = sock.recvmsg(1 << 20, ancillary_space(16))
        except (BlockingIOError, InterruptedError):
            continue
        except ConnectionResetError:
            return None
        fds = received_fds(anc)
        framer.receive_data(data, fds, fds_truncated=bool(flags & socket.MSG_CTRUNC))
        if not data:
            return None
    return out


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None, reports: list[FuzzReport] | None = None) -> int:
    """``python3 -m platpass.vfio_user.fuzz``: exit 1 if anything was found. The reports
    are appended to ``reports`` when given (bench/fuzz.py prints them beside a baseline)."""
    parser = argparse.ArgumentParser(
        prog="python3 -m platpass.vfio_user.fuzz",
        description="Structural fuzzing of the vfio-user server (see the module docstring).")
    parser.add_argument("--target", choices=("direct", "server", "external", "all"),
                        default="all")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time budget per target (default 120 s unless --messages)")
    parser.add_argument("--messages", type=int, default=None,
                        help="stop a target after this many messages")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--replay", type=int, action="append", default=[],
                        metavar="CASE_SEED", help="rerun one case (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None or args.messages else 120.0
    names = ("direct", "server", "external") if args.target == "all" else (args.target,)
    reports = [] if reports is None else reports
    for name in names:
        if name == "external":
            if args.replay:
                continue
            reports.append(run_external(seconds=seconds or 60.0, seed=args.seed))
            continue
        target = DirectTarget() if name == "direct" else ServerTarget()
        try:
            reports.append(run(target, messages=args.messages, seconds=seconds,
                               seed=args.seed, replay=args.replay))
        finally:
            target.close()
    for report in reports:
        if args.json:
            print(json.dumps({"target": report.target, "messages": report.messages,
                              "cases": report.cases, "seconds": round(report.seconds, 2),
                              "rate": round(report.rate), "replies": report.replies,
                              "error_replies": report.error_replies,
                              "findings": [str(f) for f in report.findings]}))
        else:
            print(report.summary())
            for finding in report.findings[:50]:
                print(f"  {finding}")
    print(f"seed {args.seed}")
    return 1 if any(r.findings for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
