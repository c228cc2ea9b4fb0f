"""Fixtures for the VFIO device tests (helpers live in ``vfio_testbed``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from platpass.reactor import EpollReactor


@pytest.fixture
def reactor() -> Iterator[EpollReactor]:
    loop = EpollReactor()
    yield loop
    loop.close()


@pytest.fixture
def eventfd() -> Iterator[Callable[[], int]]:
    """Factory of non-blocking eventfds, closed after the test."""
    made: list[int] = []

    def make() -> int:
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        made.append(fd)
        return fd

    yield make
    for fd in made:
        os.close(fd)
