"""Structured logs for long-running commands (``serve``, ``up``).

Two formats, chosen with ``--log-format``:

* ``text`` — one line per record, ``LEVEL logger: message key=value ...``; what a person
  reads in ``journalctl``;
* ``json`` — one JSON object per line (``ts``, ``level``, ``logger``, ``msg`` and the
  structured fields), what a log shipper parses without regular expressions.

Structured fields travel in ``extra=`` (``log.info("...", extra={"device": path})``); only
the names in :data:`FIELDS` are emitted, so a record can never leak arbitrary attributes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import IO, Any

#: Structured fields a record may carry (``extra=``), in output order.
FIELDS = ("device", "socket", "pid", "uid", "gid", "errno", "error", "event", "client")

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``exc`` holds a formatted traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update(_fields(record))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, sort_keys=False)


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message key=value ...`` (values with spaces are quoted)."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{record.levelname} {record.name}: {record.getMessage()}"]
        for name, value in _fields(record).items():
            text = str(value)
            parts.append(f"{name}={json.dumps(text) if ' ' in text or not text else text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class SafeStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler for servers: logging must never stop serving, nor flood.

    When writing a record fails (a full filesystem, a log file on a vanished disk, stderr
    on /dev/full), logging stops: :attr:`failed` says why, one line saying so goes to
    stderr (when that is not the failing stream, or raw fd 2 as a last try), and later
    records are dropped. The stock handler printed a "--- Logging error ---" traceback
    for every record instead.
    """

    failed: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed is not None:
            return
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        err = sys.exc_info()[1]
        if not isinstance(err, OSError | ValueError):
            super().handleError(record)  # a formatting bug: keep the stock report
            return
        self.failed = str(err)
        note = f"platpass: writing logs failed ({err}); logging stopped, serving continues\n"
        try:
            if self.stream is not sys.stderr and sys.stderr is not None:
                sys.stderr.write(note)
                sys.stderr.flush()
            else:
                os.write(2, note.encode())
        except (OSError, ValueError):
            pass


def configure_logging(fmt: str = "text", level: str = "warning",
                      stream: IO[str] | None = None) -> logging.Handler:
    """Send platpass's logs to ``stream`` (stderr) in ``fmt`` at ``level``; returns the
    handler installed on the ``platpass`` logger (replacing one installed before).

    Raises ValueError for an unknown format or level (the CLI's choices prevent both).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: choose from {', '.join(FORMATS)}")
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: choose from {', '.join(LEVELS)}")
    handler = SafeStreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("platpass-ops")
    root = logging.getLogger("platpass")
    for old in list(root.handlers):
        if old.get_name() == "platpass-ops":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler


def add_logging_options(parser: Any, default_level: str = "warning") -> None:
    """``--log-format`` and ``--log-level`` for a subcommand's parser."""
    parser.add_argument("--log-format", choices=FORMATS, default="text",
                        help="log lines as text (key=value) or JSON objects (default text)")
    parser.add_argument("--log-level", choices=LEVELS, default=default_level,
                        help=f"least severe level logged (default {default_level})")


__all__ = ["FIELDS", "JsonFormatter", "SafeStreamHandler", "TextFormatter", "add_logging_options",
           "configure_logging"]
