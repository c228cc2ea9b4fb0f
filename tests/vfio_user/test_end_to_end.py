"""End to end: ``python -m platpass serve`` in another process, our client in this one.

Guest-driver-like sequences on the simulated board's PL011, PL031, PL061 and SP805 over a
real socket: identification registers, programming, an interrupt delivered to an eventfd,
automasking and UNMASK, user masking, reset, disconnect and reconnect with state kept, a
second client refused, socket modes, SO_PEERCRED refusal, mmap of a mappable page, and a
clean shutdown on SIGTERM.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from platpass.errors import ConnectionLost, VfioError
from platpass.host.simulated.board import board_dts_path
from platpass.vfio_device.uapi import DeviceFlags, IrqInfoFlags, RegionFlags
from platpass.vfio_user.client import VfioUserClient

# Every server and client here runs once on the C fast path and once on the Python one.
pytestmark = pytest.mark.usefixtures("fast_path")

SOC = "/soc@9000000"
PL011, PL031, PL061, SP805 = "serial@0", "rtc@20000", "gpio@30000", "watchdog@40000"


class Server:
    """A ``platpass serve`` subprocess; stopped with SIGTERM."""

    def __init__(self, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "platpass", "serve", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=pass_fds)
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.strip() == "ready":
                return
        raise AssertionError(f"server did not start: {self.lines} {self.proc.stderr.read()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every assignable device of the simulated board, one socket each."""
    sockets = tmp_path_factory.mktemp("socks")
    server = Server("--sim", "--socket-dir", str(sockets))
    yield sockets
    assert server.stop() == 0
    assert not list(sockets.glob("*.sock")), "sockets left behind after SIGTERM"


def connect(board: Path, name: str) -> VfioUserClient:
    return VfioUserClient.connect(board / f"{name}.sock")


def wait_irq(fd: int, timeout: float) -> int:
    """The eventfd count once it fires, 0 if it did not within ``timeout``."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.eventfd_read(fd) if ready else 0


@pytest.fixture
def eventfd() -> Iterator[int]:
    fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    yield fd
    os.close(fd)


def test_every_socket_is_0600_and_describes_a_platform_device(board: Path) -> None:
    names = sorted(p.stem for p in board.glob("*.sock"))
    assert {PL011, PL031, PL061, SP805} <= set(names)
    for name in names:
        assert stat.S_IMODE(os.stat(board / f"{name}.sock").st_mode) == 0o600
        with connect(board, name) as client:
            info = client.device_info()
            assert info.flags & DeviceFlags.PLATFORM and info.flags & DeviceFlags.RESET
            assert (info.num_regions, info.num_irqs) == (1, 1)
            region = client.region_info(0)
            assert region.info.size == 0x1000
            assert region.info.flags & (RegionFlags.READ | RegionFlags.WRITE)
            irq = client.irq_info(0)
            assert irq.count == 1
            assert irq.flags == IrqInfoFlags.EVENTFD | IrqInfoFlags.MASKABLE | \
                IrqInfoFlags.AUTOMASKED  # the board's lines are level-high


def test_pl011_driver_sequence_tx_interrupt_and_trapped_dmacr(board: Path, eventfd: int
                                                               ) -> None:
    with connect(board, PL011) as uart:
        assert [uart.read(0, 0xFE0 + 4 * i, 4) for i in range(4)] == [0x11, 0x10, 0x34, 0x00]
        assert [uart.read(0, 0xFF0 + 4 * i, 4) for i in range(4)] == [0x0D, 0xF0, 0x05, 0xB1]
        uart.set_trigger_eventfd(0, eventfd)
        uart.write(0, 0x24, 4, 1)  # UARTIBRD
        uart.write(0, 0x2C, 4, 0x60)  # UARTLCR_H: 8 bits, no FIFO
        uart.write(0, 0x30, 4, 0x301)  # UARTCR: UARTEN | TXE | RXE
        uart.write(0, 0x48, 4, 0x3)  # UARTDMACR: trapped, never reaches the device
        assert uart.read(0, 0x48, 4) == 0
        uart.write(0, 0x38, 4, 0x20)  # UARTIMSC: TXIM
        uart.write(0, 0x00, 4, ord("A"))  # UARTDR
        assert wait_irq(eventfd, 2.0) == 1
        assert uart.read(0, 0x40, 4) & 0x20  # UARTMIS: TXMIS
        uart.write(0, 0x38, 4, 0)
        uart.unmask(0)
        uart.reset()
        assert uart.read(0, 0x38, 4) == 0


def test_sp805_interrupt_automask_unmask_and_user_mask(board: Path, eventfd: int) -> None:
    with connect(board, SP805) as wdog:
        wdog.set_trigger_eventfd(0, eventfd)
        wdog.write(0, 0xC00, 4, 0x1ACCE551)  # WDOGLOCK: unlock
        wdog.write(0, 0x000, 4, 2000)  # WDOGLOAD: 2 ms at 1 MHz
        wdog.write(0, 0x008, 4, 1)  # WDOGCONTROL: INTEN
        assert wait_irq(eventfd, 2.0) == 1
        assert wdog.read(0, 0x010, 4) == 1  # WDOGRIS
        # Level line, automasked: it stays quiet although still asserted, until UNMASK.
        assert wait_irq(eventfd, 0.1) == 0
        wdog.write(0, 0x00C, 4, 1)  # WDOGINTCLR: clear and reload
        wdog.unmask(0)
        assert wait_irq(eventfd, 2.0) == 1  # the next timeout fires again
        # A user MASK holds a pending interrupt back; UNMASK delivers it.
        wdog.mask(0)
        wdog.write(0, 0x00C, 4, 1)
        time.sleep(0.02)
        assert wait_irq(eventfd, 0.05) == 0
        wdog.unmask(0)
        assert wait_irq(eventfd, 2.0) == 1
        wdog.write(0, 0x008, 4, 0)
        wdog.disable_irqs(0)
        wdog.reset()


def test_unmask_eventfd_acts_as_resampler(board: Path, eventfd: int) -> None:
    resample = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        with connect(board, SP805) as wdog:
            wdog.set_trigger_eventfd(0, eventfd)
            wdog.set_unmask_eventfd(0, resample)
            wdog.write(0, 0xC00, 4, 0x1ACCE551)
            wdog.write(0, 0x000, 4, 2000)
            wdog.write(0, 0x008, 4, 1)
            assert wait_irq(eventfd, 2.0) == 1
            wdog.write(0, 0x00C, 4, 1)
            os.eventfd_write(resample, 1)  # what KVM does on guest EOI
            assert wait_irq(eventfd, 2.0) == 1
            wdog.write(0, 0x008, 4, 0)
            wdog.reset()
    finally:
        os.close(resample)


def test_pl031_counter_and_state_kept_across_reconnect(board: Path) -> None:
    with connect(board, PL031) as rtc:
        first = rtc.read(0, 0x00, 4)  # RTCDR
        rtc.write(0, 0x04, 4, 0x12345678)  # RTCMR
        rtc.dma_map(0x4000_0000, 0x10_0000)  # a VMM maps guest RAM; forgotten on close
    with connect(board, PL031) as rtc:
        assert rtc.read(0, 0x04, 4) == 0x12345678
        assert rtc.read(0, 0x00, 4) >= first
        rtc.dma_map(0x4000_0000, 0x10_0000)  # no EEXIST: the old client's map was dropped
        rtc.dma_unmap(0x4000_0000, 0x10_0000)


def test_write_multiple_when_negotiated(board: Path) -> None:
    with VfioUserClient.connect(board / f"{PL061}.sock", write_multiple=True) as gpio:
        assert gpio.server_caps.get("write_multiple") is True
        assert gpio.write_multi([(0, 0x400, 4, 0xF0), (0, 0x410, 4, 0x0)]) == 2
        gpio.write_multi([(0, 0x400, 4, 0x3C)], no_reply=True)  # posted, as QEMU does
        assert gpio.read(0, 0x400, 4) == 0x3C
        gpio.reset()
    with connect(board, PL061) as plain:
        assert "write_multiple" not in plain.server_caps
        with pytest.raises(VfioError) as info:
            plain.write_multi([(0, 0x400, 4, 0)])
        assert info.value.errno == errno.ENOTSUP


def test_pl061_registers(board: Path) -> None:
    with connect(board, PL061) as gpio:
        assert [gpio.read(0, 0xFE0 + 4 * i, 4) for i in range(4)] == [0x61, 0x10, 0x14, 0x00]
        gpio.write(0, 0x400, 4, 0x0F)  # GPIODIR: pins 0-3 out
        assert gpio.read(0, 0x400, 4) == 0x0F
        gpio.write(0, 0x3FC, 4, 0x05)  # GPIODATA through the all-bits mask address
        assert gpio.read(0, 0x3FC, 4) & 0x0F == 0x05
        gpio.reset()


def test_second_client_is_refused_and_first_keeps_working(board: Path) -> None:
    with connect(board, PL031) as first:
        with pytest.raises(ConnectionLost):
            connect(board, PL031)
        assert first.read(0, 0xFE0, 4) == 0x31


def test_bad_accesses_get_errno_and_connection_survives(board: Path) -> None:
    with connect(board, PL031) as rtc:
        with pytest.raises(VfioError) as info:
            rtc.read(0, 0x1000, 4)
        assert info.value.errno == 22
        with pytest.raises(VfioError):
            rtc.read(3, 0, 4)
        assert rtc.read(0, 0xFE0, 4) == 0x31


def test_peercred_allow_list_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "rtc.sock"
    server = Server("--sim", f"{SOC}/{PL031}", "--socket", str(path),
                    "--allow-uid", str(os.getuid() + 4242), "--mode", "0666")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        with pytest.raises(ConnectionLost):
            VfioUserClient.connect(path)
    finally:
        assert server.stop() == 0
    assert not path.exists()


def test_refused_node_is_not_served(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "platpass", "serve", "--sim", f"{SOC}/ethernet@200000",
         "--socket", str(tmp_path / "eth.sock")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "REFUSED_BUS_MASTER" in proc.stderr
    assert not (tmp_path / "eth.sock").exists()


def test_mappable_page_is_mmapped_from_the_region_fd(tmp_path: Path) -> None:
    """A PL011 described with a two-page window: its register page holds FIFO registers
    and is trapped; the second page has none, so the server offers it (sparse mmap + fd)
    and the client maps it."""
    dts = tmp_path / "wide.dts"
    dts.write_text(board_dts_path().read_text().replace(
        "reg = <0x0 0x1000>;", "reg = <0x0 0x2000>;"))
    path = tmp_path / "wide.sock"
    server = Server("--dts", str(dts), "--backend", "sim", f"{SOC}/{PL011}",
                    "--socket-path", str(path))
    try:
        with VfioUserClient.connect(path) as client:
            region = client.region_info(0)
            assert region.fd is not None
            os.close(region.fd)
            assert region.info.flags & RegionFlags.MMAP and region.info.flags & RegionFlags.CAPS
            assert [(a.offset, a.size) for a in region.areas()] == [(0x1000, 0x1000)]
            mapped = client.map_region(0)
            mapped.write32(0x1004, 0xCAFEF00D)
            with pytest.raises(VfioError):
                mapped.read32(0x0)  # the register page is trapped, never mapped
            mapped.close()
        with VfioUserClient.connect(path) as again:
            mapped = again.map_region(0)
            assert mapped.read32(0x1004) == 0xCAFEF00D  # same memory, state kept
            assert mapped.read(0x1006, 2) == 0xCAFE
            mapped.write(0x1008, 8, 0x0123456789ABCDEF)
            assert (mapped.read32(0x1008), mapped.read32(0x100C)) == (0x89ABCDEF, 0x01234567)
            mapped.close()
    finally:
        assert server.stop() == 0


def test_board_pl031_is_mapped_whole_and_its_counter_moves_in_the_mapping(board: Path
                                                                         ) -> None:
    """The board's own PL031 (one page, as firmware describes it) is offered whole: MMAP,
    no sparse capability. Through the mapping the client reads the identification and
    watches RTCDR move once a second; writes through it (RTCMR, RTCICR) are taken over by
    the device at its next event boundary, here a trapped read."""
    with connect(board, PL031) as rtc:
        region = rtc.region_info(0)
        assert region.fd is not None
        os.close(region.fd)
        assert region.info.flags & RegionFlags.MMAP
        assert not region.info.flags & RegionFlags.CAPS and region.info.sparse_areas is None
        assert [(a.offset, a.size) for a in region.areas()] == [(0, 0x1000)]
        mapped = rtc.map_region(0)
        try:
            assert mapped.read32(0xFE0) == 0x31 and mapped.read32(0xFFC) == 0xB1
            first = mapped.read32(0x00)
            deadline = time.monotonic() + 3.0
            while mapped.read32(0x00) == first and time.monotonic() < deadline:
                time.sleep(0.01)
            assert mapped.read32(0x00) == first + 1       # the 1 Hz tick, seen in memory
            mapped.write32(0x04, 0x1234_5678)             # RTCMR, no message
            mapped.write32(0x1C, 1)                       # RTCICR, no message
            assert rtc.read(0, 0x04, 4) == 0x1234_5678    # boundary: taken over
            assert mapped.read32(0x1C) == 0               # write-1-to-clear reads 0 again
            assert abs(rtc.read(0, 0x00, 4) - mapped.read32(0x00)) <= 1
        finally:
            mapped.close()


def test_inherited_listening_socket_with_fd_option(tmp_path: Path) -> None:
    """vfio-user's backend convention: ``--fd=FDNUM`` names a socket set up by the caller."""
    path = tmp_path / "handed.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    server = Server("--sim", f"{SOC}/{PL031}", f"--fd={listener.fileno()}",
                    pass_fds=(listener.fileno(),))
    listener.close()
    try:
        with VfioUserClient.connect(path) as rtc:
            assert rtc.read(0, 0xFE0, 4) == 0x31
    finally:
        assert server.stop() == 0
