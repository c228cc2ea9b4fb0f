"""The whole path: simulated board -> VFIO device -> vfio-user socket -> KVM client -> guest.

The server runs on its own reactor thread; the KVM client reaches the devices only through
their sockets (region fds for mapping, REGION_READ/WRITE for trapped registers, eventfds
for interrupts).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kvm_helpers import check_mapped_ack

from platpass.drivers.registry import DriverRegistry
from platpass.errors import VmmError
from platpass.guest.placement import Allocator, new_record
from platpass.vmm.client import attach_socket
from platpass.vmm.guest_programs import BootInfo, load_program
from platpass.vmm.kvm import Vm, kvm_unavailable_reason
from platpass.vmm.kvm_uapi import Exit
from platpass.vmm.simboard import SimBoardServer

KVM_REASON = kvm_unavailable_reason()
pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(KVM_REASON is not None, reason=KVM_REASON or "")]


@pytest.fixture
def board(sim_registry: DriverRegistry) -> Iterator[SimBoardServer]:
    with SimBoardServer(("arm,pl011", "arm,pl031"), registry=sim_registry) as server:
        yield server


@pytest.fixture
def wired(vm: Vm, board: SimBoardServer) -> Iterator[dict[str, object]]:
    allocator = Allocator(new_record())
    out: dict[str, object] = {}
    channels = []
    for served in board.devices:
        placement = allocator.place(served.node)
        device, channel = attach_socket(vm, served.socket, served.node.name,
                                        placement=placement)
        channels.append((device, channel))
        out[served.node.compatible[0]] = (served, placement, device)
    yield out
    for device, channel in channels:
        device.detach()
        channel.close()


def test_guest_uart_text_arrives_over_vfio_user(vm: Vm, board: SimBoardServer,
                                                wired: dict[str, object]) -> None:
    served, placement, device = wired["arm,pl011"]
    base = placement.guest_address
    ports = load_program(vm, "pl011", BootInfo(uart=base, message=b"over vfio-user\n"))
    vm.vcpus[0].run(timeout=10)
    assert ports.result == 0
    assert board.call(served.model.take_tx) == b"over vfio-user\n"
    assert device.stats.forwarded_writes >= len(b"over vfio-user\n")


def test_trapped_writes_are_posted_by_default_and_can_wait_for_replies(
        vm: Vm, board: SimBoardServer) -> None:
    served = next(d for d in board.devices if "arm,pl011" in d.node.compatible)
    placement = Allocator(new_record()).place(served.node)
    ports = None
    for posted in (True, False):
        kwargs = {} if posted else {"posted_writes": False}
        device, channel = attach_socket(vm, served.socket, served.node.name,
                                        placement=placement, **kwargs)
        try:
            assert channel.posted_writes is posted
            text = b"posted\n" if posted else b"replied\n"
            ports = load_program(vm, "pl011", BootInfo(uart=placement.guest_address,
                                                       message=text), ports)
            vm.vcpus[0].run(timeout=10)
            assert ports.result == 0
            assert board.call(served.model.take_tx) == text
        finally:
            device.detach()
            channel.close()


def test_trapped_register_exits_exactly_once_per_access(vm: Vm, board: SimBoardServer,
                                                        wired: dict[str, object]) -> None:
    served, placement, device = wired["arm,pl011"]
    assert device.stats.mapped_bytes == 0  # FIFO registers (and UARTDMACR) on its page
    ports = load_program(vm, "mmio_read",
                         BootInfo(read_address=placement.guest_address + 0x18, count=40))
    before = vm.exits.snapshot()
    vm.vcpus[0].run(timeout=10)
    taken = vm.exits.since(before)
    assert taken.by_reason[Exit.MMIO] == 40
    assert taken.mmio_by_label[f"{served.node.name}.r0"] == 40
    assert device.stats.forwarded_reads == 40
    assert ports.reports[0] == 0x90  # UARTFR: TXFE | RXFE


def test_board_pl031_counter_is_read_through_the_memory_slot_without_exits(
        vm: Vm, board: SimBoardServer, wired: dict[str, object]) -> None:
    """The board's PL031, one page as firmware describes it, is a KVM memory slot over the
    device's memfd: the guest reads RTCDR 10 000 times and the VMM sees no MMIO exit and
    forwards nothing, yet the value is the device's counter (mirrored on every tick)."""
    served, placement, device = wired["arm,pl031"]
    assert device.stats.mapped_bytes == 0x1000 and device.stats.trapped_bytes == 0
    ports = load_program(vm, "mmio_read",
                         BootInfo(read_address=placement.guest_address, count=10_000))
    before = vm.exits.snapshot()
    vm.vcpus[0].run(timeout=10)
    taken = vm.exits.since(before)
    assert ports.result == 0
    assert taken.by_reason[Exit.MMIO] == 0
    assert device.stats.forwarded_reads == device.stats.forwarded_writes == 0
    counter = board.call(lambda: served.model.counter)
    assert abs(ports.reports[0] - counter) <= 1


def test_rtc_alarm_is_acked_through_the_mapping_with_no_spurious_redelivery(
        vm: Vm, board: SimBoardServer, wired: dict[str, object]) -> None:
    """The PL031 alarm with every register access through the memory slot (RTCIMSC and
    RTCMR set-up, RTCDR read, the ISR's RTCICR ack): no MMIO exit at all. The guest's EOI
    reaches the device through the KVM resample fd; the unmask takes over the mapped
    RTCICR before its re-fire check, so the line is low and nothing is delivered again."""
    served, placement, device = wired["arm,pl031"]
    rtc = placement.guest_address
    gsi = device.irqs[0].gsi
    ports = load_program(vm, "irq", BootInfo(
        gsi=gsi, level=True, setup=((rtc + 0x10, 1),), read_address=rtc,
        arm_address=rtc + 0x04, arm_value=1, arm_relative=True,
        ack_address=rtc + 0x1C, ack_value=1))
    before = vm.exits.snapshot()
    vm.vcpus[0].run(timeout=5)
    assert ports.result == 0
    assert ports.reports[0] == 1
    assert vm.exits.since(before).by_reason[Exit.MMIO] == 0
    assert device.stats.forwarded_reads == device.stats.forwarded_writes == 0
    # the resample -> UNMASK reaches the device thread a moment after the guest finishes
    assert board.thread.run_until(lambda: served.device.stats.irqs[0].unmasks >= 1, 2.0)
    check_mapped_ack(board.thread, served.device, served.backend)


def test_server_gone_mid_run_ends_the_run_with_an_error(vm: Vm, board: SimBoardServer,
                                                        wired: dict[str, object]) -> None:
    _served, placement, _device = wired["arm,pl011"]
    flags = placement.guest_address + 0x18  # UARTFR: trapped
    load_program(vm, "mmio_read", BootInfo(read_address=flags, count=10_000_000))
    stopper = threading.Timer(0.3, board.close)
    stopper.start()
    try:
        with pytest.raises(VmmError, match=rf"serial@0: read of 4 bytes at guest {flags:#x}"):
            vm.vcpus[0].run(timeout=20)
    finally:
        stopper.join()
