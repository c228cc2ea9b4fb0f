"""A simulated board device wired into a real KVM guest, in-process (no vfio-user):
memory slots for mappable windows, forwarded exits for the rest, irqfd + resample."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kvm_helpers import check_mapped_ack

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import default_registry
from platpass.errors import VmmError
from platpass.firmware.devicetree import load_dts
from platpass.firmware.model import DeviceNode, MmioRange
from platpass.host.simulated.board import board_dts_path, open_sim_backend
from platpass.vfio_device.device import VfioDevice
from platpass.vmm.guest_programs import BootInfo, load_program
from platpass.vmm.kvm import Vm, kvm_unavailable_reason
from platpass.vmm.kvm_uapi import Exit
from platpass.vmm.passthrough import PassthroughDevice, ReactorThread, ThreadedDevice

KVM_REASON = kvm_unavailable_reason()

UART = 0xD000_0000
RTC = 0xD001_0000
PVM = Path("/sys/module/kvm_pvm").exists()


def _driver(node: DeviceNode) -> PlatformDriver:
    cls = default_registry().match(node.compatible)
    if cls is None:  # the register-level drivers land separately; a bare declaration
        cls = type("BareDriver", (PlatformDriver,), {
            "name": "bare", "compatibles": node.compatible, "family": "test",
            "evidence": "stand-in until the real driver lands"})
    return cls(node)


def _node(compatible: str, size: int | None = None) -> DeviceNode:
    tree = load_dts(board_dts_path())
    node = next(n for n in tree.devices() if compatible in n.compatible)
    if size is not None:
        node = dataclasses.replace(node, regions=(MmioRange(node.regions[0].address, size),))
    return node


class Wired:
    def __init__(self, vm: Vm, compatible: str, base: int, gsi: int,
                 size: int | None = None) -> None:
        self.thread = ReactorThread()
        self.node = _node(compatible, size)
        self.backend = self.thread.call(lambda: open_sim_backend(self.node, self.thread.reactor))
        self.device = self.thread.call(lambda: VfioDevice(
            self.node, _driver(self.node), self.backend, self.thread.reactor))
        self.thread.call(self.device.open)
        self.pt = PassthroughDevice(vm, ThreadedDevice(self.device, self.thread),
                                    self.node.name, [base], [gsi])
        self.pt.attach()

    def close(self) -> None:
        self.pt.detach()
        self.thread.call(self.device.close)
        self.thread.stop()


@pytest.fixture
def wire(vm: Vm) -> Iterator[object]:
    made: list[Wired] = []

    def make(compatible: str, base: int, gsi: int, size: int | None = None) -> Wired:
        w = Wired(vm, compatible, base, gsi, size)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(KVM_REASON is not None, reason=KVM_REASON or "")]


def test_guest_uart_text_arrives_at_the_simulated_pl011(vm: Vm, wire) -> None:
    uart = wire("arm,pl011", UART, 16)
    ports = load_program(vm, "pl011", BootInfo(uart=UART, message=b"hi from KVM\n"))
    vm.vcpus[0].run(timeout=10)
    assert ports.result == 0
    sent = uart.thread.call(uart.backend.model.take_tx)
    assert sent == b"hi from KVM\n"
    flags, control, count = ports.reports
    assert flags & 0x80 and not flags & 0x08  # TXFE, not BUSY
    assert control & 0x301 == 0x301
    assert count == len(sent)


def test_trapped_register_costs_exactly_one_exit_per_access(vm: Vm, wire) -> None:
    uart = wire("arm,pl011", UART, 17)
    assert uart.pt.stats.mapped_bytes == 0  # FIFO registers (and UARTDMACR) on its page
    ports = load_program(vm, "mmio_read", BootInfo(read_address=UART + 0x18, count=25))
    vm.vcpus[0].run(timeout=10)
    assert vm.exits.by_reason[Exit.MMIO] == 25
    assert uart.pt.stats.forwarded_reads == 25
    assert uart.thread.call(lambda: uart.device.stats.backend_reads) >= 25
    assert ports.reports[0] == 0x90  # UARTFR: TXFE | RXFE


def test_board_pl031_is_a_memory_slot_read_with_no_exit(vm: Vm, wire) -> None:
    # the board's PL031 as firmware describes it: one page, no side-effect range, no trap
    rtc = wire("arm,pl031", RTC, 17)
    assert rtc.pt.stats.mapped_bytes == 0x1000 and rtc.pt.stats.trapped_bytes == 0
    ports = load_program(vm, "mmio_read", BootInfo(read_address=RTC, count=10_000))
    vm.vcpus[0].run(timeout=10)
    assert vm.exits.by_reason[Exit.MMIO] == 0
    assert rtc.pt.stats.forwarded_reads == 0
    counter = rtc.thread.call(lambda: rtc.backend.model.counter)
    assert abs(ports.reports[0] - counter) <= 1


def test_mapped_window_costs_no_exit(vm: Vm, wire) -> None:
    # a two-page PL011 region: the registers' page is trapped, the second page is mappable
    uart = wire("arm,pl011", UART, 17, size=0x2000)
    assert uart.pt.stats.mapped_bytes == 0x1000
    load_program(vm, "mmio_read", BootInfo(read_address=UART + 0x1000, count=10_000))
    vm.vcpus[0].run(timeout=10)
    assert vm.exits.by_reason[Exit.MMIO] == 0
    assert uart.pt.stats.forwarded_reads == 0


#: The guest puts the UART in loopback (UARTCR: UARTEN|TXE|RXE|LBE) with the receive-timeout
#: interrupt unmasked (UARTIMSC.RTIM); one byte written to UARTDR then comes back to the
#: receiver and 32 bit-times later RTRIS raises the (level) line.
LOOPBACK = ((UART + 0x30, 0x381), (UART + 0x38, 1 << 6))


def test_device_interrupt_is_taken_by_the_guest_through_irqfd(vm: Vm, wire) -> None:
    uart = wire("arm,pl011", UART, 18)
    ports = load_program(vm, "irq", BootInfo(
        gsi=18, level=True, setup=LOOPBACK, arm_address=UART, arm_value=ord("x"),  # UARTDR
        ack_address=UART + 0x44, ack_value=1 << 6))                    # UARTICR.RTIC
    vm.vcpus[0].run(timeout=10)
    assert ports.result == 0
    assert ports.reports[0] == 1
    wired = uart.pt.irqs[0]
    assert wired.level and wired.resample_fd is not None
    assert not uart.thread.call(lambda: uart.backend.line(0))  # acked at the device
    fired = uart.thread.call(lambda: uart.device.stats.irqs[0])
    assert fired.delivered >= 1


def test_rtc_alarm_interrupt_reaches_the_guest(vm: Vm, wire) -> None:
    rtc = wire("arm,pl031", RTC, 20)
    # a PL031 driver's alarm: IMSC on, then RTCMR = RTCDR + 1; ISR acks with RTCICR. All
    # of it through the memory slot: the device takes the writes over at its boundaries
    # (the tick for the set-up, the unmask caused by the guest's EOI for the ack).
    ports = load_program(vm, "irq", BootInfo(
        gsi=20, level=True, setup=((RTC + 0x10, 1),), read_address=RTC,
        arm_address=RTC + 0x04, arm_value=1, arm_relative=True,
        ack_address=RTC + 0x1C, ack_value=1))
    vm.vcpus[0].run(timeout=5)
    assert ports.result == 0
    assert ports.reports[0] == 1
    assert vm.exits.by_reason[Exit.MMIO] == 0
    assert rtc.thread.run_until(lambda: rtc.device.stats.irqs[0].unmasks >= 1, 2.0)
    check_mapped_ack(rtc.thread, rtc.device, rtc.backend)


@pytest.mark.skipif(PVM, reason="this host's KVM is PVM (kvm_pvm), which runs a guest "
                    "with paging off in its instruction emulator and completes a level "
                    "interrupt at injection rather than at the guest's EOI")
def test_level_interrupt_is_redelivered_only_after_the_guest_eoi(vm: Vm, wire) -> None:
    wire("arm,pl011", UART, 19)
    ports = load_program(vm, "irq", BootInfo(
        gsi=19, level=True, setup=LOOPBACK, arm_address=UART, arm_value=ord("x"),
        ack_address=UART + 0x44, ack_value=1 << 6, count=200_000, delayed_eoi=True))
    vm.vcpus[0].run(timeout=10)
    assert ports.result == 0
    before_eoi, final = ports.reports[0], ports.reports[1]
    assert before_eoi == 1   # no re-delivery while the guest had not EOI'd
    assert final == 2        # EOI -> resample -> UNMASK -> still asserted -> fires again


def test_guest_eoi_unmasks_the_device_through_the_resample_fd(vm: Vm, wire) -> None:
    uart = wire("arm,pl011", UART, 19)
    # the guest takes the interrupt and EOIs but never acks at the device
    ports = load_program(vm, "irq", BootInfo(
        gsi=19, level=True, setup=LOOPBACK, arm_address=UART, arm_value=ord("x")))
    vm.vcpus[0].run(timeout=10)
    assert ports.result == 0
    assert uart.thread.call(lambda: uart.backend.line(0))  # still asserted at the device
    # KVM signalled the resample fd; the device unmasked and, the line being still
    # asserted, fired again: nothing in userspace on the VMM side took part
    assert uart.thread.run_until(lambda: uart.device.stats.irqs[0].unmasks >= 1
                                 and uart.device.stats.irqs[0].delivered >= 2, 2.0)


class _Nothing:
    def mmio_read(self, address: int, size: int) -> int:
        return 0

    def mmio_write(self, address: int, size: int, value: int) -> None:
        pass


def test_attach_at_a_bad_address_is_refused_and_leaves_nothing(vm: Vm) -> None:
    thread = ReactorThread()
    node = _node("arm,pl031")
    try:
        backend = thread.call(lambda: open_sim_backend(node, thread.reactor))
        device = thread.call(lambda: VfioDevice(node, _driver(node), backend, thread.reactor))
        thread.call(device.open)
        channel = ThreadedDevice(device, thread)
        for base, why in ((RTC + 0x10, "not page-aligned"), (0x1000, "overlaps ram")):
            pt = PassthroughDevice(vm, channel, "rtc", [base], [22])
            with pytest.raises(VmmError, match=why):
                pt.attach()
            assert [s.label for s in vm.slots] == ["ram"]
            assert pt.irqs == []
        # a two-page PL011 maps its second page as a slot first; the failure comes after it
        uart = _node("arm,pl011")
        big = dataclasses.replace(uart, regions=(MmioRange(uart.regions[0].address, 0x2000),))
        backend2 = thread.call(lambda: open_sim_backend(big, thread.reactor))
        device2 = thread.call(lambda: VfioDevice(big, _driver(big), backend2, thread.reactor))
        pt = PassthroughDevice(vm, ThreadedDevice(device2, thread), "rtc2", [RTC], [])
        with pytest.raises(VmmError, match="1 interrupts but only 0 guest lines"):
            pt.attach()
        # something else already claims the trapped page: the mapped page's slot is made
        # first, then the trapped page clashes, and the slot is undone
        vm.add_mmio(RTC, 0x1000, _Nothing(), "other")
        pt = PassthroughDevice(vm, ThreadedDevice(device2, thread), "rtc2", [RTC], [22])
        with pytest.raises(VmmError, match=r"rtc2\.r0 .* overlaps other"):
            pt.attach()
        assert pt.stats.mapped_bytes == 0x1000
        assert [s.label for s in vm.slots] == ["ram"]
        assert pt.irqs == []
        thread.call(device.close)
        thread.call(device2.close)
    finally:
        thread.stop()


def test_a_region_that_overlaps_a_trapped_range_is_refused(vm: Vm, wire) -> None:
    wire("arm,pl011", UART, 17)
    node = _node("arm,pl031")
    thread = ReactorThread()
    try:
        backend = thread.call(lambda: open_sim_backend(node, thread.reactor))
        device = thread.call(lambda: VfioDevice(node, _driver(node), backend, thread.reactor))
        pt = PassthroughDevice(vm, ThreadedDevice(device, thread), "rtc", [UART], [23])
        with pytest.raises(VmmError, match="overlaps"):
            pt.attach()
        assert pt.stats.mapped_bytes == 0 and pt.irqs == []
        # the UART still works: its guest range is intact
        ports = load_program(vm, "mmio_read", BootInfo(read_address=UART + 0x18, count=2))
        vm.vcpus[0].run(timeout=5)
        assert ports.result == 0 and ports.reports[0] == 0x90
        thread.call(device.close)
    finally:
        thread.stop()


def test_level_line_is_redelivered_only_when_the_resample_fd_is_signalled(
        vm: Vm, wire) -> None:
    # The VMM's half of the level contract, independent of how the host's KVM times the
    # resample: after firing, the device keeps the line masked until the resample fd
    # (KVM's signal that the guest EOI'd) is written, and then re-fires a still-asserted
    # line. No guest runs: KVM consumes the trigger eventfd and holds the GSI.
    uart = wire("arm,pl011", UART, 19)
    for offset, value in ((0x30, 0x381), (0x38, 1 << 6), (0x00, ord("x"))):
        uart.thread.call(lambda o=offset, v=value: uart.device.write(0, o, 4, v))

    def irq() -> object:
        return uart.thread.call(lambda: uart.device.stats.irqs[0])

    assert uart.thread.run_until(lambda: uart.device.stats.irqs[0].delivered == 1, 2.0)
    time.sleep(0.2)
    assert irq().delivered == 1 and irq().unmasks == 0   # masked: no re-delivery
    assert uart.thread.call(lambda: uart.backend.line(0))  # though still asserted
    os.eventfd_write(uart.pt.irqs[0].resample_fd, 1)       # what KVM does on EOI
    assert uart.thread.run_until(lambda: uart.device.stats.irqs[0].delivered == 2, 2.0)
    assert irq().unmasks == 1


def test_an_access_the_device_refuses_reads_as_all_ones(vm: Vm, wire) -> None:
    uart = wire("arm,pl011", UART, 17)
    # a 4-byte load at offset 2 is not naturally aligned: the VFIO device says EINVAL;
    # the guest sees all-ones (as from a bus error), the VMM carries on and counts it
    ports = load_program(vm, "mmio_read", BootInfo(read_address=UART + 2, count=3))
    vm.vcpus[0].run(timeout=10)
    assert ports.result == 0
    assert ports.reports[0] == 0xFFFF_FFFF
    assert uart.pt.stats.refused == 3
    assert uart.thread.call(lambda: uart.device.stats.refused) == 3
