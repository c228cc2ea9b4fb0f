"""A simulated device's state outlives its process: snapshot, the restricted unpickling of
the saved file, and restore in a fresh model of the same node (what a restarted
``serve --workers`` worker does), for every model kind."""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path

import pytest

from platpass.firmware import devicetree
from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.board import board_dts_path, load_board, open_sim_backend, populate_bus
from platpass.host.simulated.clock import ManualClock
from platpass.ops.workers import _KeptState, _StateUnpickler
from platpass.reactor import EpollReactor

PL011 = "/soc@9000000/serial@0"
PL031 = "/soc@9000000/rtc@20000"
PL061 = "/soc@9000000/gpio@30000"
SP805 = "/soc@9000000/watchdog@40000"
NS16550 = "/soc@9000000/serial@50000"
SPI_BOARD = board_dts_path("sim-pci-spi.dts")
SPI = "/soc@9000000/spi@60000"


def _open(path: str, clock: ManualClock) -> SimulatedBackend:
    tree = devicetree.load_dts(SPI_BOARD) if path == SPI else load_board()
    backend = open_sim_backend(tree.node(path), EpollReactor(), clock)
    if path == SPI:
        populate_bus(backend, tuple(tree.raw.descendants(SPI)))
    return backend


def _round_trip(state: dict) -> dict:
    """Through the file format the workers use, and its restricted loader."""
    return _StateUnpickler(io.BytesIO(pickle.dumps(state))).load()


def _registers(backend: SimulatedBackend) -> dict[int, int]:
    model = backend.model
    return {offset: model.peek_reg(offset) for offset in model.mirror_offsets}


# What a guest did to each device before its worker died: (offset, width, value) writes.
SESSIONS = {
    PL011: [(0x24, 4, 1), (0x28, 4, 0), (0x2C, 4, 0x70), (0x38, 4, 0x50),
            (0x30, 4, 0x301), (0x00, 4, ord("A")), (0x00, 4, ord("B"))],
    PL031: [(0x04, 4, 0x1234), (0x10, 4, 1), (0x08, 4, 1000)],
    PL061: [(0x400, 4, 0x0F), (0x3FC, 4, 0x05), (0x410, 4, 0xF0)],
    SP805: [(0x00, 4, 50_000), (0x08, 4, 3)],
    NS16550: [(0x0C, 4, 0x80), (0x00, 4, 13), (0x0C, 4, 0x03), (0x08, 4, 0x07),
              (0x04, 4, 0x01), (0x00, 4, ord("x"))],
    SPI: [(0x00, 8, 0x1001), (0x80, 8, 0x06), (0x10, 8, 1 | 1 << 8),
          (0x80, 8, 0x02), (0x88, 8, 0), (0x90, 8, 0x20), (0x98, 8, 0xAB),
          (0x10, 8, 4 | 4 << 8)],
}


@pytest.mark.parametrize("path", list(SESSIONS))
def test_restored_model_shows_the_same_registers_and_state(path: str) -> None:
    clock = ManualClock(100.0)
    before = _open(path, clock)
    for offset, width, value in SESSIONS[path]:
        before.write(0, offset, width, value)
    clock.advance(0.0001)
    state = before.snapshot()
    after = _open(path, clock)
    assert _registers(after) != _registers(before) or path == PL031
    after.restore(_round_trip(state))
    assert _registers(after) == _registers(before)
    assert after.snapshot() == state
    assert [after.line(i) for i in range(after.irq_count)] == \
        [before.line(i) for i in range(before.irq_count)]
    if path == SPI:
        assert after.model.targets[0].data[0x20] == 0xAB   # the EEPROM's array came along
    before.close()
    after.close()


def test_a_running_watchdog_reaches_zero_when_it_was_going_to() -> None:
    clock = ManualClock(10.0)
    before = _open(SP805, clock)
    before.write(0, 0x00, 4, 1000)          # WdogLoad
    before.write(0, 0x08, 4, 1)             # INTEN: counting
    rate = before.model.rate
    clock.advance(400 / rate)
    state = before.snapshot()
    before.close()                          # the worker died
    clock.advance(100 / rate)               # while nobody served it
    after = _open(SP805, clock)
    after.restore(_round_trip(state))
    assert 490 <= after.read(0, 0x04, 4) <= 510    # WdogValue kept counting
    assert not after.line(0)
    clock.advance(499 / rate)
    assert not after.line(0)
    clock.advance(3 / rate)
    assert after.line(0)                    # the interrupt, on time


def test_a_uart_carries_on_with_the_characters_it_held() -> None:
    clock = ManualClock(5.0)
    before = _open(NS16550, clock)
    for offset, width, value in SESSIONS[NS16550][:-1]:
        before.write(0, offset, width, value)
    for byte in b"hello":
        before.write(0, 0x00, 4, byte)
    char = before.model.char_time()
    clock.advance(char * 1.5)                # 'h' left, 'e' is on the wire
    assert bytes(before.model.tx_output) == b"h"
    state = before.snapshot()
    before.close()
    after = _open(NS16550, clock)
    after.restore(_round_trip(state))
    clock.advance(char * 10)
    assert bytes(after.model.tx_output) == b"ello"   # the log is the host's, not state
    before_rx = _open(NS16550, clock)
    for offset, width, value in SESSIONS[NS16550][:-1]:
        before_rx.write(0, offset, width, value)
    before_rx.model.inject_rx(b"ok")
    again = _open(NS16550, clock)
    again.restore(_round_trip(before_rx.snapshot()))
    assert again.read(0, 0x00, 4) == ord("o") and again.read(0, 0x00, 4) == ord("k")


@pytest.fixture
def states(tmp_path: Path):
    """The states directory as a worker holds it: an fd (names are looked up in it)."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_kept_state_saves_after_a_change_and_a_new_worker_loads_it(tmp_path: Path,
                                                                   states: int) -> None:
    reactor = EpollReactor()
    clock = ManualClock(1.0)
    first = _open(PL031, clock)
    kept = _KeptState(reactor, first, states, "device0.state", PL031)
    assert not kept.load()                  # nothing saved yet: power-on state
    kept.watch()
    first.write(0, 0x04, 4, 0xBEEF)         # RTCMR
    assert reactor.run_until(lambda: (tmp_path / "device0.state").exists(), 2.0)
    second = _open(PL031, clock)
    assert _KeptState(reactor, second, states, "device0.state", PL031).load()
    assert second.read(0, 0x04, 4) == 0xBEEF
    reactor.close()


def test_a_file_that_is_not_model_state_is_ignored(tmp_path: Path, states: int,
                                                    caplog) -> None:
    path = tmp_path / "device0.state"
    path.write_bytes(pickle.dumps({"mr": os.system}))
    backend = _open(PL031, ManualClock())
    with caplog.at_level(logging.WARNING):
        assert not _KeptState(EpollReactor(), backend, states, path.name, PL031).load()
    assert "posix.system is not model state" in caplog.text
    assert "power-on state" in caplog.text
    path.write_bytes(b"\x80\x05garbage")
    assert not _KeptState(EpollReactor(), backend, states, path.name, PL031).load()
    assert backend.read(0, 0x04, 4) == 0


def test_a_failed_save_is_logged_once_and_serving_goes_on(tmp_path: Path, caplog) -> None:
    reactor = EpollReactor()
    backend = _open(PL031, ManualClock())
    gone = tmp_path / "gone"
    gone.mkdir()
    fd = os.open(gone, os.O_RDONLY | os.O_DIRECTORY)
    gone.rmdir()  # the directory is gone under the fd: no file can be made in it
    kept = _KeptState(reactor, backend, fd, "device0.state", PL031)
    kept.watch()
    with caplog.at_level(logging.ERROR):
        backend.write(0, 0x04, 4, 1)
        reactor.run_until(lambda: False, 0.1)
        backend.write(0, 0x04, 4, 2)
        reactor.run_until(lambda: False, 0.1)
    assert caplog.text.count("cannot save its state") == 1
    assert backend.read(0, 0x04, 4) == 2
    os.close(fd)
    reactor.close()
