"""The whole path: simulated board -> VFIO device -> vfio-user socket -> KVM client -> guest.

The server runs on its own reactor thread; the KVM client reaches the devices only through
their sockets (region fds for mapping, REGION_READ/WRITE for trapped registers, eventfds
for interrupts).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

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


def test_trapped_register_exits_exactly_once_per_access(vm: Vm, board: SimBoardServer,
                                                        wired: dict[str, object]) -> None:
    served, placement, device = wired["arm,pl031"]
    ports = load_program(vm, "mmio_read",
                         BootInfo(read_address=placement.guest_address, count=40))
    before = vm.exits.snapshot()
    vm.vcpus[0].run(timeout=10)
    taken = vm.exits.since(before)
    assert taken.by_reason[Exit.MMIO] == 40
    assert taken.mmio_by_label[f"{served.node.name}.r0"] == 40
    assert device.stats.forwarded_reads == 40
    counter = board.call(lambda: served.model.counter)
    assert abs(ports.reports[0] - counter) <= 1


def test_rtc_alarm_reaches_the_guest_through_irqfd(vm: Vm, board: SimBoardServer,
                                                   wired: dict[str, object]) -> None:
    served, placement, device = wired["arm,pl031"]
    rtc = placement.guest_address
    gsi = device.irqs[0].gsi
    ports = load_program(vm, "irq", BootInfo(
        gsi=gsi, level=True, setup=((rtc + 0x10, 1),), read_address=rtc,
        arm_address=rtc + 0x04, arm_value=1, arm_relative=True,
        ack_address=rtc + 0x1C, ack_value=1))
    vm.vcpus[0].run(timeout=5)
    assert ports.result == 0
    assert ports.reports[0] == 1
    stats = board.call(lambda: served.device.stats.irqs[0])
    assert stats.delivered >= 1
    assert not board.call(lambda: served.backend.line(0))  # the ISR acked at the device



def test_server_gone_mid_run_ends_the_run_with_an_error(vm: Vm, board: SimBoardServer,
                                                        wired: dict[str, object]) -> None:
    _served, placement, _device = wired["arm,pl031"]
    load_program(vm, "mmio_read",
                 BootInfo(read_address=placement.guest_address, count=10_000_000))
    stopper = threading.Timer(0.3, board.close)
    stopper.start()
    try:
        with pytest.raises(VmmError, match=r"rtc@20000: read of 4 bytes at guest 0xc001000"):
            vm.vcpus[0].run(timeout=20)
    finally:
        stopper.join()
