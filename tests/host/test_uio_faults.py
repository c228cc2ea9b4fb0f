"""UIO backend faults that can be produced without a UIO device: the interrupt fd failing.

The registers are a plain file standing in for ``/dev/uio0`` (mmap works the same), and the
interrupt fd is then replaced, under the same number, by an eventfd whose 4-byte read fails
with EINVAL - the way a read fails once the device is removed under us.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from platpass.errors import HostError
from platpass.host.uio import UioBackend
from platpass.reactor import EpollReactor


class Listener:
    def __init__(self) -> None:
        self.fired: list[int] = []

    def irq_fired(self, index: int) -> None:
        self.fired.append(index)


@pytest.fixture
def fake_uio(tmp_path: Path) -> tuple[Path, Path]:
    sysfs, dev = tmp_path / "sys", tmp_path / "dev"
    map0 = sysfs / "class" / "uio" / "uio0" / "maps" / "map0"
    map0.mkdir(parents=True)
    (map0 / "addr").write_text("0x9010000\n")
    (map0 / "size").write_text("0x1000\n")
    (map0 / "offset").write_text("0x0\n")
    dev.mkdir()
    (dev / "uio0").write_bytes(bytes(4096))
    return sysfs, dev


def test_a_failing_interrupt_fd_retires_the_line_and_spares_the_loop(
        fake_uio: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    sysfs, dev = fake_uio
    backend = UioBackend("uio0", sysfs=sysfs, dev=dev)
    reactor = EpollReactor()
    other = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        backend.write(0, 0x10, 4, 0xA5A5_0001)
        assert backend.read(0, 0x10, 4) == 0xA5A5_0001
        assert backend.irq_count == 1

        broken = os.eventfd(1, os.EFD_NONBLOCK)
        os.dup2(broken, backend.fd)  # same fd number, now a read of 4 bytes is EINVAL
        os.close(broken)
        listener = Listener()
        backend.attach(reactor, listener)
        other_seen: list[int] = []
        reactor.add_reader(other, lambda: other_seen.append(os.eventfd_read(other)))

        with caplog.at_level(logging.ERROR, logger="platpass.host.uio"):
            reactor.run_once(0.5)  # must not raise out of the loop
        assert isinstance(backend.irq_failure, OSError)
        assert not reactor.watching(backend.fd)
        assert listener.fired == []
        assert "interrupt line retired" in caplog.text
        with pytest.raises(HostError, match="interrupt line is gone"):
            backend.unmask_irq(0)
        with pytest.raises(HostError, match="interrupt line is gone"):
            backend.mask_irq(0)

        os.eventfd_write(other, 7)  # another device on the same loop keeps working
        assert reactor.run_until(lambda: other_seen == [7], 1.0)
        assert backend.read(0, 0x10, 4) == 0xA5A5_0001  # registers still reachable
    finally:
        backend.close()
        reactor.close()
        os.close(other)
