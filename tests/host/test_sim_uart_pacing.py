"""The simulated UARTs keep their line rate when host timers fire late (epoll waits in whole
milliseconds; a character at 115200 baud takes 87 us): back-to-back characters are timed
from when the previous one was due, so a late shifter catches up and the average rate is
the programmed one — never faster."""

from __future__ import annotations

import heapq

from platpass.firmware import devicetree
from platpass.host.simulated import ManualClock
from platpass.host.simulated.board import board_dts_path, open_sim_backend
from platpass.reactor import EpollReactor

BOARD = board_dts_path("sim-pci-uart.dts")
CHAR = 10 / 115200


class LateClock(ManualClock):
    """Timers run only at the end of each advance, seeing that later time (a host whose
    timers fire up to ``seconds`` late)."""

    def advance(self, seconds: float) -> int:
        deadline = self._now + seconds
        self._now = deadline
        ran = 0
        while self._timers and self._timers[0].when <= deadline:
            timer = heapq.heappop(self._timers)
            callback, timer.callback = timer.callback, None
            if callback is not None:
                callback()
                ran += 1
        return ran


def _uart(clock: ManualClock):
    node = devicetree.load_dts(BOARD).node("/soc@9000000/serial@50000")
    backend = open_sim_backend(node, EpollReactor(), clock)
    for offset, value in ((3, 0x83), (0, 1), (1, 0), (3, 0x03), (2, 0x01)):  # 115200 8N1
        backend.write(0, offset, 1, value)
    return backend


def test_late_timers_still_give_the_line_rate():
    clock = LateClock()
    backend = _uart(clock)
    model = backend.model
    sent = 0
    for step in range(1, 41):                     # 40 ms in 1 ms steps, each timer late
        while len(model.tx_fifo) < model.capacity and sent < 600:
            backend.write(0, 0, 1, 0x41)
            sent += 1
        clock.advance(0.001)
        # never faster than the wire: one character per CHAR, plus the one in flight
        assert len(model.tx_output) <= step * 0.001 / CHAR + 1
    assert len(model.tx_output) >= 40 * 0.001 / CHAR - 20   # ~460: not one per timer (40)
    backend.close()


def test_exact_timers_unchanged():
    clock = ManualClock()
    backend = _uart(clock)
    for _ in range(16):
        backend.write(0, 0, 1, 0x42)
    clock.advance(CHAR * 16 - CHAR / 2)
    assert len(backend.model.tx_output) == 15
    clock.advance(CHAR)
    assert len(backend.model.tx_output) == 16
    backend.close()
