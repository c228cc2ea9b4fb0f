"""``--trace FILE``: every guest register access and interrupt event, as JSON lines, and
``platpass replay``, which feeds the recorded accesses to a fresh simulated device.

Records (one JSON object per line, ``t`` = the model clock, i.e. the reactor's monotonic
time, so a replay on a :class:`~platpass.host.simulated.clock.ManualClock` sees the same
time a running model saw):

* ``{"event": "open", "device", "compatible", "clock", "version"}`` — before any other
  record of the device; ``clock`` is the time its backend was opened;
* ``{"event": "read"|"write", "device", "t", "region", "offset", "size", "value"}`` —
  with ``"errno"`` instead of (for reads) a value when the device refused the access;
* ``{"event": "reset", "device", "t", "why": "open"|"reset"}`` — driver resets (serving
  started, VFIO_DEVICE_RESET);
* ``{"event": "irq", "device", "t", "index", "what": "fired"|"delivered"|"masked"|
  "unmasked"}``.

Tracing hooks the :class:`~platpass.vfio_device.device.VfioDevice` *instance*: its
``read``/``write``/``open``/``reset`` are wrapped on that object only and the IRQ controller
reports to :attr:`IrqController.observer`, so untraced devices pay nothing. A traced device
must not map pages to the client (a mapped access never reaches the device): the caller
builds it with ``force_trap_all=True``, which ``serve --trace`` and ``up`` do.

Replay is for debugging a guest driver against the model: a divergence is a read whose
value differs from the recorded one (or an access refused on one side only). Inputs the
trace does not hold make replays of some registers differ by nature: the PL031 counter
(its base is the host's wall clock), UART receive data and GPIO pins driven by the host.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from platpass.errors import HostError, OpsError, VfioError
from platpass.host.safepath import open_append
from platpass.inputs import bounded_line, read_lines
from platpass.reactor import Reactor
from platpass.vfio_device.device import VfioDevice

TRACE_VERSION = 1
#: Largest time a trace record may carry (seconds of CLOCK_MONOTONIC: ~31,700 years).
MAX_TRACE_TIME = 1e12

log = logging.getLogger(__name__)


class TraceWriter:
    """Appends records to one trace file, shared by every traced device of a process.

    Timestamps come from ``clock`` (the reactor's ``time``). Without ``reactor`` every line
    is flushed as written; with one, lines written in one burst are flushed together
    ``flush_delay`` seconds later (or at :meth:`close`, which the server's shutdown path
    always runs), which halves the cost per access; only a SIGKILL can then lose the last
    ``flush_delay`` of records.

    Tracing never stops serving: when writing or flushing fails (a full filesystem, a
    vanished disk), tracing stops — the file is closed, :attr:`failed` says why, one
    warning is logged — and every later record is dropped silently.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.monotonic, *,
                 reactor: Reactor | None = None, flush_delay: float = 0.05) -> None:
        self.path = Path(path)
        try:
            # Never through a symlink, never a FIFO: the server may run as root.
            fd = open_append(self.path, 0o640)
        except HostError as err:
            raise OpsError(f"cannot open trace file: {err}") from err
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
        self.clock = clock
        self.records = 0
        self._reactor = reactor
        self._flush_delay = flush_delay
        self._flush_pending = False
        #: Why tracing stopped (None while it runs).
        self.failed: str | None = None

    def _stop(self, err: Exception) -> None:
        self.failed = str(err)
        log.warning("trace %s: writing failed (%s); tracing stopped, serving continues",
                    self.path, err, extra={"errno": getattr(err, "errno", None),
                                           "event": "error"})
        with contextlib.suppress(OSError, ValueError):
            self._file.close()  # the fd is closed even when the final flush fails

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (any JSON-able dict)."""
        self.write_line(json.dumps(record, separators=(",", ":")) + "\n")

    def write_line(self, line: str) -> None:
        """Append one already-encoded record (a JSON object and its newline)."""
        if self._file.closed:
            return
        try:
            self._file.write(line)
            if self._reactor is None:
                self._file.flush()
        except (OSError, ValueError) as err:
            self._stop(err)
            return
        self.records += 1
        if self._reactor is None:
            return
        if not self._flush_pending:
            self._flush_pending = True
            self._reactor.call_later(self._flush_delay, self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self.flush()

    def flush(self) -> None:
        """Write out buffered records now (before a fork, at shutdown)."""
        if not self._file.closed:
            try:
                self._file.flush()
            except (OSError, ValueError) as err:
                self._stop(err)

    def attach(self, device: VfioDevice, name: str, opened_at: float) -> None:
        """Record ``device`` under ``name`` from now on (its backend opened at
        ``opened_at``); the :class:`~platpass.assembly.Recorder` the assembly layer uses."""
        DeviceTracer(self, device, name, opened_at=opened_at)

    def close(self) -> None:
        if self._file.closed:
            return
        try:
            self._file.close()
        except (OSError, ValueError) as err:
            self._stop(err)


class DeviceTracer:
    """Records one device's accesses and interrupt events to a :class:`TraceWriter`."""

    def __init__(self, writer: TraceWriter, device: VfioDevice, name: str, *,
                 opened_at: float | None = None) -> None:
        self.writer = writer
        self.device = device
        self.name = name
        clock = writer.clock
        writer.write({"event": "open", "device": name, "compatible": list(
            device.node.compatible), "clock": clock() if opened_at is None else opened_at,
            "t": clock(), "version": TRACE_VERSION})
        read, write = device.read, device.write
        open_, reset = device.open, device.reset
        emit = writer.write_line
        # Accesses are the hot records: formatted directly (json.dumps costs more than the
        # access itself); the device name is JSON-escaped once.
        read_head = '{"event":"read","device":' + json.dumps(name) + ',"t":'
        write_head = '{"event":"write","device":' + json.dumps(name) + ',"t":'

        def traced_read(region: int, offset: int, size: int) -> int:
            t = clock()
            where = f',"region":{int(region)},"offset":{int(offset)},"size":{int(size)}'
            try:
                value = read(region, offset, size)
            except VfioError as err:
                emit(f'{read_head}{t!r}{where},"errno":{err.errno}}}\n')
                raise
            emit(f'{read_head}{t!r}{where},"value":{value}}}\n')
            return value

        def traced_write(region: int, offset: int, size: int, value: int) -> None:
            t = clock()
            where = (f',"region":{int(region)},"offset":{int(offset)},"size":{int(size)},'
                     f'"value":{int(value)}')
            try:
                write(region, offset, size, value)
            except VfioError as err:
                emit(f'{write_head}{t!r}{where},"errno":{err.errno}}}\n')
                raise
            emit(f'{write_head}{t!r}{where}}}\n')

        def traced_open() -> None:
            writer.write({"event": "reset", "device": name, "t": clock(), "why": "open"})
            open_()

        def traced_reset() -> None:
            writer.write({"event": "reset", "device": name, "t": clock(), "why": "reset"})
            reset()

        # Instance attributes shadow the methods for this object only; the server's fast
        # path binds device.read/write when a client connects, so it sees these.
        device.read = traced_read  # type: ignore[method-assign]
        device.write = traced_write  # type: ignore[method-assign]
        device.open = traced_open  # type: ignore[method-assign]
        device.reset = traced_reset  # type: ignore[method-assign]
        device.irqs.observer = self.irq_event

    def irq_event(self, index: int, what: str) -> None:
        """IrqController observer: one ``irq`` record."""
        self.writer.write({"event": "irq", "device": self.name, "t": self.writer.clock(),
                           "index": index, "what": what})


# -- reading and replaying -------------------------------------------------------------

def read_trace(path: str | Path) -> Iterator[dict[str, Any]]:
    """The records of a trace file; OpsError naming the line for anything malformed.

    A regular file only (opened without blocking), read line by line with each line capped
    (:data:`~platpass.inputs.MAX_LINE_BYTES`): a FIFO, a device or a file without line
    breaks is a one-line error, not a hang or a memory hog.
    """
    handle = read_lines(path, what="trace", error=OpsError)
    with handle:
        number = 0
        while True:
            number += 1
            raw = bounded_line(handle, where=f"{path}:{number}", error=OpsError)
            if not raw:
                return
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise OpsError(f"{path}:{number}: not UTF-8 text ({err.reason})") from err
            except (ValueError, RecursionError) as err:
                raise OpsError(f"{path}:{number}: not JSON: "
                               f"{'nested too deeply' if isinstance(err, RecursionError) else err}"
                               ) from err
            if not isinstance(record, dict) or not isinstance(record.get("event"), str) \
                    or not isinstance(record.get("device"), str):
                raise OpsError(f"{path}:{number}: a record needs string 'event' and "
                               "'device' fields")
            record["line"] = number
            yield record


@dataclass(frozen=True, slots=True)
class Divergence:
    """One recorded access the replay did not reproduce."""

    line: int
    device: str
    event: str
    region: int
    offset: int
    size: int
    expected: str
    actual: str

    def __str__(self) -> str:
        return (f"line {self.line}: {self.device}: {self.event} region {self.region} "
                f"offset {self.offset:#x} size {self.size}: recorded {self.expected}, "
                f"replay {self.actual}")


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay did: accesses replayed per device and every divergence."""

    accesses: dict[str, int]
    divergences: tuple[Divergence, ...]
    skipped: tuple[str, ...]


def _outcome(record: dict[str, Any]) -> str:
    if "errno" in record:
        code = int(record["errno"])
        return f"error {errno_module.errorcode.get(code, str(code))}"
    if record["event"] == "read":
        return f"{int(record['value']):#x}"
    return "ok"


class _ReplayDevice:
    """A fresh simulated device on a manual clock, built like the server builds one."""

    def __init__(self, node_path: str, opened_at: float) -> None:
        from platpass.assembly import (
            TreeSource,
            find_export,
            load_tree,
            open_device,
            sim_opener,
        )
        from platpass.host.simulated.clock import ManualClock
        from platpass.reactor import EpollReactor

        tree = load_tree(TreeSource("sim"))
        if node_path not in {n.path for n in tree.devices()}:
            raise OpsError(f"replay: {node_path} is not a device of the simulated board")
        export = find_export(tree, node_path)
        if isinstance(export, str):
            raise OpsError(f"replay: {export}")
        self.clock = ManualClock(opened_at)
        self.reactor = EpollReactor()
        try:
            self.device = open_device(export, sim_opener(lambda: self.clock), self.reactor,
                                      trap_all=True)
        except BaseException:
            self.reactor.close()
            raise

    def at(self, t: float) -> None:
        delta = t - self.clock.now()
        if delta > 0:
            self.clock.advance(delta)

    def close(self) -> None:
        try:
            self.device.close()
        finally:
            self.reactor.close()


def replay(path: str | Path, node: str | None = None) -> ReplayReport:
    """Feed the recorded accesses of ``path`` (only ``node``'s when given) to fresh
    simulated devices, in order and at their recorded times; OpsError when the trace is
    malformed or names a device the simulated board does not have."""
    devices: dict[str, _ReplayDevice] = {}
    accesses: dict[str, int] = {}
    divergences: list[Divergence] = []
    skipped: list[str] = []
    try:
        for record in read_trace(path):
            name = record["device"]
            if node is not None and name != node:
                continue
            event = record["event"]
            if event == "open":
                if name in devices:
                    devices.pop(name).close()
                devices[name] = _ReplayDevice(name, _time(record, "clock", path, 0.0))
                accesses.setdefault(name, 0)
                continue
            target = devices.get(name)
            if target is None:
                if name not in skipped:
                    skipped.append(name)
                continue
            try:
                target.at(_time(record, "t", path))
                if event == "reset":
                    if record.get("why") == "open":
                        target.device.open()
                    else:
                        target.device.reset()
                elif event in ("read", "write"):
                    accesses[name] += 1
                    _replay_access(target.device, record, divergences)
            except (KeyError, TypeError, ValueError, OverflowError) as err:
                raise OpsError(f"{path}:{record['line']}: malformed {event} record: "
                               f"{err}") from err
    finally:
        for target in devices.values():
            target.close()
    if node is not None and node not in accesses:
        raise OpsError(f"replay: {path} has no record of {node}")
    return ReplayReport(accesses, tuple(divergences), tuple(skipped))


def _time(record: dict[str, Any], key: str, path: str | Path,
          default: float | None = None) -> float:
    """A record's clock field: a finite number of seconds (OpsError naming the line)."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value < 0 or value > MAX_TRACE_TIME:
        raise OpsError(f"{path}:{record['line']}: {record['event']} record: {key!r} must be "
                       f"a number of seconds (0..{MAX_TRACE_TIME:g}), got {value!r}")
    return float(value)


def _replay_access(device: VfioDevice, record: dict[str, Any],
                   divergences: list[Divergence]) -> None:
    region, offset, size = int(record["region"]), int(record["offset"]), int(record["size"])
    result: dict[str, Any] = dict(record)
    result.pop("errno", None)
    try:
        if record["event"] == "read":
            result["value"] = device.read(region, offset, size)
        else:
            device.write(region, offset, size, int(record["value"]))
    except VfioError as err:
        result["errno"] = err.errno
    expected, actual = _outcome(record), _outcome(result)
    if expected != actual:
        divergences.append(Divergence(int(record["line"]), record["device"], record["event"],
                                      region, offset, size, expected, actual))


__all__ = ["TRACE_VERSION", "DeviceTracer", "Divergence", "ReplayReport", "TraceWriter",
           "read_trace", "replay"]
