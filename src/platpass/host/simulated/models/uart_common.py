"""What the two UART models (PL011, 16550A) share: the host-side port and the shifter.

Both UARTs put one character on the wire per character time, feed it back to their own
receiver in loopback, keep TX/RX FIFOs that shrink to a 1-byte holding register when FIFO
mode is off, and arm a receive-timeout timer while characters wait. Which register bits say
"loopback", when the timeout is armed and what it raises are register semantics, so they
stay in each model; this base holds only the mechanics that are the same in both, so a fix
to the host-side handles (:attr:`tx_output`, :attr:`on_tx`, :meth:`take_tx`,
:meth:`inject_rx`, :meth:`inject_break`) lands once.

The FIFOs stay plain :class:`collections.deque` objects: a wrapper class would cost a
Python-level call on every ``len`` and pop in the trapped-access hot path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import ClassVar

from platpass.host.simulated.clock import Cancellable, ModelClock
from platpass.host.simulated.models.base import DeviceModel

#: Bytes of transmitted output kept for the host side (the oldest half is dropped beyond).
TX_OUTPUT_LIMIT = 1 << 20


class UartModel(DeviceModel):
    """Base of the UART models. Subclasses set :attr:`depth` and :attr:`break_errors`,
    provide ``fifo_enabled`` and implement the register-level hooks below."""

    #: FIFO depth when FIFO mode is on.
    depth: int
    #: The error bits :meth:`_receive` gets for a break (each model's own encoding).
    break_errors: ClassVar[int]
    fifo_enabled: bool
    rx_fifo: deque[int]
    tx_fifo: deque[int]
    #: When the character in the shifter is (or the last one was) due on the wire.
    _shift_due: float = 0.0
    #: True while the shifter hands over to the next FIFO entry (see :meth:`_start_shift`).
    _chained: bool = False
    #: The character in the shift register while :attr:`_shifting`.
    _shift_byte: int = 0
    #: Host-side logs, not device state: what went out on the wire is gone.
    not_state: ClassVar[frozenset[str]] = frozenset({"tx_output"})

    def __init__(self, clock: ModelClock) -> None:
        super().__init__(clock)
        #: The bytes the UART has put on the wire (host side), the newest
        #: :data:`TX_OUTPUT_LIMIT` of them: a guest writing forever to a UART nobody
        #: reads (``serve --sim``) must not grow the server without bound.
        self.tx_output = bytearray()
        #: Called with each transmitted byte (host side).
        self.on_tx: Callable[[bytes], None] | None = None
        self._tx_timer: Cancellable | None = None
        self._rx_timeout_timer: Cancellable | None = None

    # -- host side ------------------------------------------------------------------------

    def inject_rx(self, data: bytes) -> None:
        """Characters arriving on the RX pin, all at once (one model step)."""
        def receive_all() -> None:
            if self._rx_pin_connected():
                for byte in data:
                    self._receive(byte)
        self.run_step(receive_all)

    def inject_break(self) -> None:
        """A break condition on the RX pin: a NUL character carrying the break error."""
        def receive_break() -> None:
            if self._rx_pin_connected():
                self._receive(0, self.break_errors)
        self.run_step(receive_break)

    def take_tx(self) -> bytes:
        """Transmitted bytes not yet taken (and forget them)."""
        data = bytes(self.tx_output)
        self.tx_output.clear()
        return data

    # -- shared mechanics -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Entries each FIFO holds now (1 in character mode)."""
        return self.depth if self.fifo_enabled else 1

    def _reset_fifos(self) -> None:
        """Cancel the shifter and the receive timeout and empty both FIFOs (reset)."""
        self.cancel(self._tx_timer)
        self.cancel(self._rx_timeout_timer)
        self._tx_timer = self._rx_timeout_timer = None
        self.tx_fifo = deque()
        self.rx_fifo = deque()
        self._shifting = False
        self._shift_due = 0.0

    def _start_shift(self, byte: int) -> None:
        """Put ``byte`` in the shift register; it leaves one character time later.

        Back-to-back characters are timed from when the previous one was due to leave, not
        from when its timer ran: a host timer fires late (epoll waits in whole
        milliseconds, a character at 115200 baud takes 87 us), and timing from "now" would
        cap the line at one character per late timer. A late shifter catches up with
        zero-delay steps, so the wire runs at the programmed rate on average and never
        faster. A character written to an idle shifter starts now."""
        self._shifting = True
        self._shift_byte = byte
        now = self.clock.now()
        start = self._shift_due if self._chained else now
        self._shift_due = due = start + self.char_time()
        self._tx_timer = self.call_later(max(due - now, 0.0), lambda: self._shift_done(byte))

    def _shift_done(self, byte: int) -> None:
        self._tx_timer = None
        self._shifting = False
        if self._loopback():
            self._receive(byte)
        else:
            self.tx_output.append(byte)
            if len(self.tx_output) > TX_OUTPUT_LIMIT:
                del self.tx_output[:len(self.tx_output) - TX_OUTPUT_LIMIT // 2]
            if self.on_tx is not None:
                self.on_tx(bytes((byte,)))
        self._chained = True       # the next FIFO entry follows this one on the wire
        try:
            self._kick_tx()
        finally:
            self._chained = False
        self._update_line()

    def resume(self) -> None:
        """A restored UART carries on: the character that was in the shift register leaves
        when it was due (or at once if that moment has passed), then the FIFO drains at the
        line rate; unread received characters get a fresh receive timeout."""
        if self._shifting:
            byte = self._shift_byte
            self._tx_timer = self.call_later(max(self._shift_due - self.clock.now(), 0.0),
                                             lambda: self._shift_done(byte))
        if self.rx_fifo:
            self._arm_rx_timeout(self._rx_timeout_delay())

    def _arm_rx_timeout(self, delay: float) -> None:
        self.cancel(self._rx_timeout_timer)
        self._rx_timeout_timer = self.call_later(delay, self._rx_timeout_expired)

    def _disarm_rx_timeout(self) -> None:
        self.cancel(self._rx_timeout_timer)
        self._rx_timeout_timer = None

    def _rx_timeout_expired(self) -> None:
        self._rx_timeout_timer = None
        if self.rx_fifo:
            self._rx_timed_out()
            self._update_line()

    # -- register semantics, per model -------------------------------------------------------
    # Declared here for type checkers; each model defines them as methods.
    #: Seconds to shift one frame.
    char_time: Callable[[], float]
    #: Whether transmitted characters go back to the receiver instead of the wire.
    _loopback: Callable[[], bool]
    #: Take one character (with its error bits) into the receiver.
    _receive: Callable[..., None]
    #: Start shifting the next TX FIFO entry if the shifter is idle.
    _kick_tx: Callable[[], None]
    #: Raise the receive-timeout condition (characters waited too long).
    _rx_timed_out: Callable[[], None]
    #: Seconds unread received characters wait before the receive timeout.
    _rx_timeout_delay: Callable[[], float]
    #: Drive the interrupt line from the interrupt state.
    _update_line: Callable[[], None]

    def _rx_pin_connected(self) -> bool:
        """Whether host-side input reaches the receiver (loopback may cut the pin off)."""
        return True
