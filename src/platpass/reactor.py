"""A small epoll event loop shared by every layer that waits on file descriptors.

One loop serves a whole platpass process: the vfio-user sockets, backend interrupt fds
(UIO), resampler/unmask eventfds and model timers all register here, so no layer needs a
thread of its own and a slow peer never blocks another. asyncio is not used because it
refuses SOCK_SEQPACKET and its plain protocols add ~28 us per round trip (DESIGN.md §5).
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

ReadCallback = Callable[[], None]
#: ``poll(epfd, timeout, fast, lock, timers) -> ready fds``
#: (:meth:`EpollReactor.use_fast_poll`).
FastPoll = Callable[..., list[int]]

log = logging.getLogger(__name__)

#: accept() failures that mean the process (or system) is out of a resource. Retrying at
#: once cannot succeed and the listening socket stays readable, so a level-triggered loop
#: would spin (and log) at full speed.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Reactor(Protocol):
    """What a layer may ask of the event loop."""

    def add_reader(self, fd: int, callback: ReadCallback) -> None:
        """Call ``callback`` whenever ``fd`` is readable (replaces an earlier callback)."""
        ...

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``; unknown fds are ignored (teardown paths may race)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` once after ``delay`` seconds."""
        ...

    def time(self) -> float:
        """The loop's clock (CLOCK_MONOTONIC seconds)."""
        ...


@dataclass(order=True)
class TimerHandle:
    """A scheduled callback; :meth:`cancel` makes it a no-op."""

    when: float
    seq: int
    callback: Callable[[], None] | None = field(compare=False)

    def cancel(self) -> None:
        """Forget the callback; the heap entry is dropped when it comes due."""
        self.callback = None


class EpollReactor:
    """Level-triggered epoll loop with timers.

    One thread runs the loop. Another thread may do the loop's kind of work (a client
    served on its own thread, see :class:`platpass.vfio_user.server.VfioUserServer`) only
    while it holds :attr:`lock`, which the loop holds while it runs callbacks and timers;
    such a thread calls :meth:`allow_helpers` first, so that a timer it schedules wakes
    the loop instead of waiting for the loop's next event.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, ReadCallback] = {}
        self._timers: list[TimerHandle] = []
        self._seq = itertools.count()
        self._stopping = False
        self._signal_wakeup: tuple[socket.socket, socket.socket] | None = None
        #: Held while callbacks run (re-entrant: a callback may close a server, which
        #: takes it again).
        self.lock = threading.RLock()
        self._loop_thread: int | None = None
        self._wake_fd: int | None = None
        #: fd -> an object that answers the fd's input itself inside ``_fast_poll``
        #: (:meth:`add_reader`'s ``fast``); its callback runs only for what it hands back.
        self._fast: dict[int, object] = {}
        self._fast_poll: FastPoll | None = None

    def allow_helpers(self) -> None:
        """Make the loop take :attr:`lock` while it dispatches, and let threads other than
        the loop's schedule timers: a timer they add wakes the loop through an eventfd, as
        its wait may be longer than the timer. Idempotent; call it before a helper thread
        starts (a loop without helpers takes no lock)."""
        if self._wake_fd is not None:
            return
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.add_reader(self._wake_fd, self._drain_wake)

    def _drain_wake(self) -> None:
        if self._wake_fd is not None:
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._wake_fd)

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        """From inside a callback: let helper threads take :attr:`lock` meanwhile (the
        caller re-checks whatever they may have changed). Outside a callback (the lock not
        held by this thread) there is nothing to let go."""
        try:
            self.lock.release()
        except RuntimeError:
            yield
            return
        try:
            yield
        finally:
            self.lock.acquire()

    def use_fast_poll(self, poll: FastPoll) -> None:
        """Make the loop wait with ``poll`` (``platpass.vfio_user._native``'s):
        ``poll(epfd, timeout, fast, lock[, timers])`` waits as ``epoll_wait`` does,
        answers the ready fds whose ``fast`` object it knows itself, and returns the fds
        whose callbacks must still run; given the timer heap, it waits on while it
        answered everything, until the timeout or a change of the heap. A trapped
        register access then costs the loop no Python at all. Idempotent."""
        self._fast_poll = poll

    def add_reader(self, fd: int, callback: ReadCallback, fast: object | None = None) -> None:
        """Call ``callback`` when ``fd`` is readable. ``fast``: an object the wait of
        :meth:`use_fast_poll` serves the fd's input with itself (``callback`` then runs
        only for what it hands back); ignored without a fast poll."""
        if fast is None:
            self._fast.pop(fd, None)
        else:
            self._fast[fd] = fast
        if fd in self._readers:
            self._readers[fd] = callback
            return
        self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self._fast.pop(fd, None)
        if self._readers.pop(fd, None) is not None:
            # An fd closed before removal was already dropped from the set by the kernel.
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(self.time() + max(delay, 0.0), next(self._seq), callback)
        heapq.heappush(self._timers, handle)
        if self._wake_fd is not None and threading.get_ident() != self._loop_thread:
            os.eventfd_write(self._wake_fd, 1)  # the loop may be waiting past this timer
        return handle

    def time(self) -> float:
        return time.monotonic()

    def run_due_timers(self) -> int:
        """Run the timers that are due now; how many ran. For a helper thread, holding
        :attr:`lock`, before it handles a request, as the loop runs due timers before it
        dispatches: a timer then fires no later relative to that client's requests than
        when the loop serves the client (the loop itself may be waiting for the lock, or
        for a CPU, meanwhile)."""
        timers = self._timers
        if timers and timers[0].when <= time.monotonic():
            return self._run_due_timers()
        return 0

    def watching(self, fd: int) -> bool:
        """True while ``fd`` has a reader (tests use it to check teardown)."""
        return fd in self._readers

    def run_once(self, timeout: float | None = None) -> int:
        """Wait for at most ``timeout`` seconds (None: until something happens), dispatch
        ready readers and due timers; returns how many callbacks ran (an access the fast
        poll answered itself runs none)."""
        self._loop_thread = threading.get_ident()
        with self.lock:
            ran = self._run_due_timers() if self._timers else 0
        if self._timers:
            until_timer = max(self._timers[0].when - self.time(), 0.0)
            timeout = until_timer if timeout is None else min(timeout, until_timer)
        if ran:
            timeout = 0.0
        if self._fast_poll is not None:  # as run_forever: fast fds answered inside
            ready = self._fast_poll(self._epoll.fileno(), -1.0 if timeout is None else timeout,
                                    self._fast, self.lock)
        else:
            ready = [fd for fd, _mask in self._epoll.poll(-1 if timeout is None else timeout)]
        readers = self._readers
        with self.lock:
            for fd in ready:
                callback = readers.get(fd)
                if callback is not None:
                    callback()
                    ran += 1
            if self._timers:
                ran += self._run_due_timers()
        return ran

    def run_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Run until ``predicate()`` is true or ``timeout`` passes; returns the predicate."""
        deadline = self.time() + timeout
        while not predicate():
            left = deadline - self.time()
            if left <= 0:
                return predicate()
            self.run_once(left)
        return True

    def run_forever(self) -> None:
        """Run until :meth:`stop` is called from a callback.

        The same steps as :meth:`run_once` in one loop with its look-ups hoisted: every
        trapped register access of a client the loop serves is one turn of it (one clock
        read when timers are pending, one ``epoll_wait``, one callback). Once helpers are
        allowed, :attr:`lock` is held while the events of one wait are dispatched.
        """
        self._stopping = False
        self._loop_thread = threading.get_ident()
        poll = self._epoll.poll
        reader = self._readers.get
        timers = self._timers
        clock = time.monotonic
        lock = self.lock
        fast_poll, fast, epfd = self._fast_poll, self._fast, self._epoll.fileno()
        while not self._stopping:
            timeout = -1.0
            if timers:
                timeout = timers[0].when - clock()
                if timeout <= 0.0:
                    with lock:
                        self._run_due_timers()
                    timeout = 0.0
            if fast_poll is not None:
                # The fast poll answers its fds' accesses itself (under the lock once
                # helpers are allowed), waiting on while that is all there is, until the
                # timeout or until the timers change; it returns fds whose callbacks
                # must run.
                helpers = self._wake_fd is not None
                ready = fast_poll(epfd, timeout, fast, lock if helpers else None, timers)
                if not ready:
                    continue
                if helpers:
                    lock.acquire()
                try:
                    for fd in ready:
                        callback = reader(fd)
                        if callback is not None:
                            callback()
                finally:
                    if helpers:
                        lock.release()
                continue
            events = poll(timeout)
            if self._wake_fd is None:  # no helper threads: no lock to take (~0.15 us)
                for fd, _mask in events:
                    callback = reader(fd)
                    if callback is not None:
                        callback()
                continue
            with lock:
                for fd, _mask in events:
                    callback = reader(fd)
                    if callback is not None:
                        callback()

    def stop(self) -> None:
        """Make :meth:`run_forever` return after the current dispatch."""
        self._stopping = True

    def stop_on_signals(
        self, signums: Iterable[int] = (signal.SIGTERM, signal.SIGINT)
    ) -> None:
        """Make ``signums`` stop :meth:`run_forever` (main thread only).

        A Python signal handler alone cannot stop the loop: ``epoll.poll`` is retried after
        the handler runs. So the signal's wakeup fd is a socket this loop watches, and its
        reader stops the loop. The handlers stay no-ops until :meth:`close`, so a second
        signal cannot interrupt the cleanup that follows the loop. Calling it again (in a
        forked child whose handlers were reset) re-arms the same wakeup socket.
        """
        if self._signal_wakeup is None:
            wake_r, wake_w = socket.socketpair()
            wake_r.setblocking(False)
            wake_w.setblocking(False)

            def on_signal() -> None:
                with contextlib.suppress(BlockingIOError):
                    wake_r.recv(64)
                self.stop()

            self.add_reader(wake_r.fileno(), on_signal)
            self._signal_wakeup = (wake_r, wake_w)
        signal.set_wakeup_fd(self._signal_wakeup[1].fileno(), warn_on_full_buffer=False)
        for signum in signums:
            signal.signal(signum, lambda *_: None)

    def close(self) -> None:
        """Release the epoll fd, the signal wakeup socket and the helpers' eventfd."""
        if self._wake_fd is not None:
            self.remove_reader(self._wake_fd)
            os.close(self._wake_fd)
            self._wake_fd = None
        if self._signal_wakeup is not None:
            signal.set_wakeup_fd(-1)
            for sock in self._signal_wakeup:
                self.remove_reader(sock.fileno())
                sock.close()
            self._signal_wakeup = None
        self._epoll.close()

    def _run_due_timers(self) -> int:
        ran = 0
        now = self.time()
        while self._timers and self._timers[0].when <= now:
            handle = heapq.heappop(self._timers)
            callback, handle.callback = handle.callback, None
            if callback is not None:
                callback()
                ran += 1
        return ran


class ListenerBackoff:
    """Takes a listening socket out of the loop for a while when accept() runs out of a
    resource (EMFILE, ENFILE, ENOBUFS, ENOMEM), instead of retrying in a hot loop.

    The pause starts at ``first`` seconds and doubles up to ``longest`` while accepts keep
    failing; one warning is logged when a pause episode starts and one when accepting works
    again (with how many attempts failed), never one per attempt. Other errors
    (ECONNABORTED: the peer left before we accepted) are per-connection and only counted.
    Everything else the loop serves keeps being served meanwhile.
    """

    def __init__(self, reactor: Reactor, fd: int, callback: ReadCallback, what: str, *,
                 first: float = 0.05, longest: float = 1.0) -> None:
        self.reactor = reactor
        self.fd = fd
        self.callback = callback
        self.what = what
        self.first = first
        self.longest = longest
        self.failures = 0
        self.pauses = 0
        self._delay = first
        self._timer: TimerHandle | None = None
        self._closed = False

    @property
    def paused(self) -> bool:
        return self._timer is not None

    def failed(self, err: OSError) -> None:
        """accept() raised ``err`` (not EAGAIN/EINTR)."""
        self.failures += 1
        if err.errno not in RESOURCE_ERRNOS:
            log.debug("%s: accept failed: %s", self.what, err)
            return
        if self._closed or self._timer is not None:
            return
        if self.pauses == 0:  # once per episode
            log.warning("%s: accept failed: %s; not accepting for %.2f s (backing off up "
                        "to %.1f s while it lasts)", self.what, err, self._delay,
                        self.longest, extra={"errno": err.errno, "event": "error"})
        self.pauses += 1
        self.reactor.remove_reader(self.fd)
        self._timer = self.reactor.call_later(self._delay, self._resume)
        self._delay = min(self._delay * 2, self.longest)

    def succeeded(self) -> None:
        """An accept worked: the next failure starts a new episode."""
        if self.pauses:
            log.warning("%s: accepting again (%d failed accepts, %d pauses)", self.what,
                        self.failures, self.pauses)
        self.failures = 0
        self.pauses = 0
        self._delay = self.first

    def _resume(self) -> None:
        self._timer = None
        if not self._closed:
            self.reactor.add_reader(self.fd, self.callback)

    def close(self) -> None:
        """The listening socket goes away: never re-register it."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
