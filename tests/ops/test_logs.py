"""Structured log lines: JSON objects or ``key=value`` text, only the declared fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from platpass.ops.logs import configure_logging


@pytest.fixture
def restore_platpass_logger() -> Iterator[None]:
    logger = logging.getLogger("platpass")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_json_lines_carry_device_and_errno(restore_platpass_logger: None) -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    log = logging.getLogger("platpass.vfio_user.server")
    log.info("client of %s: receive failed: %s", "/soc/gpio", "reset",
             extra={"device": "/soc/gpio", "errno": 104, "event": "error", "secret": "x"})
    log.debug("not shown at info")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert {k: v for k, v in record.items() if k != "ts"} == {
        "level": "info", "logger": "platpass.vfio_user.server",
        "msg": "client of /soc/gpio: receive failed: reset", "device": "/soc/gpio",
        "errno": 104, "event": "error"}


def test_text_lines_are_key_value_and_reconfiguring_replaces_the_handler(
        restore_platpass_logger: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("text", "warning", first)
    configure_logging("text", "warning", second)
    logging.getLogger("platpass.x").warning("refusing peer", extra={
        "device": "/soc/uart", "pid": 7, "uid": 1000, "event": "refused", "error": "a b"})
    assert first.getvalue() == ""
    assert second.getvalue() == ('WARNING platpass.x: refusing peer device=/soc/uart pid=7 '
                                 'uid=1000 error="a b" event=refused\n')


def test_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging("xml", "info")
    with pytest.raises(ValueError, match="log level 'loud'"):
        configure_logging("json", "loud")
