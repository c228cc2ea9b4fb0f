"""The shared epoll loop: readers, timers, teardown."""

from __future__ import annotations

import os
import time

import pytest

from platpass.reactor import EpollReactor


@pytest.fixture
def reactor():
    loop = EpollReactor()
    yield loop
    loop.close()


def test_reader_runs_when_fd_readable(reactor: EpollReactor) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    seen: list[int] = []
    reactor.add_reader(efd, lambda: seen.append(os.eventfd_read(efd)))
    assert reactor.run_once(0) == 0
    os.eventfd_write(efd, 3)
    assert reactor.run_until(lambda: bool(seen), 1.0)
    assert seen == [3]
    reactor.remove_reader(efd)
    assert not reactor.watching(efd)
    os.eventfd_write(efd, 1)
    assert reactor.run_once(0) == 0
    os.close(efd)


def test_replacing_a_reader_keeps_one_registration(reactor: EpollReactor) -> None:
    efd = os.eventfd(1, os.EFD_NONBLOCK)
    calls: list[str] = []
    reactor.add_reader(efd, lambda: calls.append("first"))
    reactor.add_reader(efd, lambda: (calls.append("second"), os.eventfd_read(efd)))
    reactor.run_once(0)
    assert calls == ["second"]
    os.close(efd)


def test_timers_run_in_order_and_cancel(reactor: EpollReactor) -> None:
    order: list[str] = []
    reactor.call_later(0.02, lambda: order.append("late"))
    reactor.call_later(0.0, lambda: order.append("early"))
    cancelled = reactor.call_later(0.01, lambda: order.append("cancelled"))
    cancelled.cancel()
    assert reactor.run_until(lambda: len(order) == 2, 1.0)
    assert order == ["early", "late"]


def test_removing_a_closed_fd_is_harmless(reactor: EpollReactor) -> None:
    efd = os.eventfd(0)
    reactor.add_reader(efd, lambda: None)
    os.close(efd)
    reactor.remove_reader(efd)
    reactor.remove_reader(12345)
    assert not reactor.watching(efd)


def test_run_forever_stops_from_callback(reactor: EpollReactor) -> None:
    reactor.call_later(0.0, reactor.stop)
    reactor.run_forever()


def test_run_forever_serves_readers_and_timers_in_order(reactor: EpollReactor) -> None:
    """run_forever is its own loop (not run_once): it must dispatch readers, run due
    timers in order, skip cancelled ones and wait for the next timer, not spin past it."""
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    order: list[str] = []

    def on_event() -> None:
        os.eventfd_read(efd)
        order.append("reader")
        reactor.call_later(0.03, lambda: (order.append("late"), reactor.stop()))

    reactor.add_reader(efd, on_event)
    reactor.call_later(0.0, lambda: (order.append("early"), os.eventfd_write(efd, 1)))
    reactor.call_later(0.01, lambda: order.append("cancelled")).cancel()
    reactor.call_later(60.0, lambda: pytest.fail("a far timer ran"))
    start = reactor.time()
    reactor.run_forever()
    assert order == ["early", "reader", "late"]
    assert reactor.time() - start >= 0.03
    reactor.remove_reader(efd)
    os.close(efd)


def test_a_signal_stops_run_forever_and_close_restores_the_wakeup_fd() -> None:
    import signal as _signal

    loop = EpollReactor()
    loop.stop_on_signals((_signal.SIGUSR1,))
    loop.call_later(0.01, lambda: os.kill(os.getpid(), _signal.SIGUSR1))
    loop.call_later(5.0, lambda: pytest.fail("SIGUSR1 did not stop the loop"))
    loop.run_forever()
    loop.close()
    assert _signal.set_wakeup_fd(-1) == -1  # close() already gave the wakeup fd back
    _signal.signal(_signal.SIGUSR1, _signal.SIG_DFL)


def test_a_timer_added_by_a_helper_thread_wakes_the_waiting_loop(reactor: EpollReactor
                                                                  ) -> None:
    import threading

    reactor.allow_helpers()
    fired = threading.Event()
    loop = threading.Thread(target=reactor.run_forever)
    loop.start()  # nothing to wait for: epoll_wait with no timeout
    try:
        time.sleep(0.05)
        with reactor.lock:  # as a client's own thread does
            reactor.call_later(0.01, fired.set)
        assert fired.wait(2.0)
    finally:
        with reactor.lock:
            reactor.call_later(0, reactor.stop)
        loop.join(2.0)
    assert not loop.is_alive()
