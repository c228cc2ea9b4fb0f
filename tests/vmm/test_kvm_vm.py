"""The VM layer on the real /dev/kvm: guest programs, exits, memory slots, interrupts."""

from __future__ import annotations

import mmap
import os
import threading

import pytest

from platpass.errors import VmmError
from platpass.vmm.guest_programs import PROGRAMS, BootInfo, build_program, load_program
from platpass.vmm.kvm import Vm
from platpass.vmm.kvm_uapi import Exit

DEVICE_BASE = 0xD000_0000

pytestmark = pytest.mark.kvm  # the tests that need a VM take the `vm` fixture (skips without KVM)


class Registers:
    """A device stand-in for the VM layer: 32-bit registers; writes to ``raise_at`` drive a
    GSI high, writes to ``lower_at`` drive it low (through KVM_IRQ_LINE)."""

    def __init__(self, vm: Vm, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self.values: dict[int, int] = {}
        self.writes: list[tuple[int, int]] = []
        self.reads = 0

    def mmio_read(self, address: int, size: int) -> int:
        self.reads += 1
        return self.values.get(address, 0)

    def mmio_write(self, address: int, size: int, value: int) -> None:
        self.writes.append((address, value))
        if address == DEVICE_BASE:
            self.vm.set_irq_line(self.gsi, True)
        elif address == DEVICE_BASE + 4:
            self.vm.set_irq_line(self.gsi, False)


def test_every_guest_program_assembles() -> None:
    for name in PROGRAMS:
        assert len(build_program(name)) > 16


def test_unknown_guest_program_is_refused() -> None:
    with pytest.raises(VmmError, match="no guest program 'nope'"):
        build_program("nope")


def test_guest_prints_reports_and_finishes(vm: Vm) -> None:
    ports = load_program(vm, "hello", BootInfo())
    assert vm.vcpus[0].run(timeout=5) is None
    assert ports.console.decode() == "hello from a platpass guest\n"
    assert ports.reports == [0x600D, 0x50504249]  # the boot-info magic, read from RAM
    assert ports.result == 0
    assert vm.exits.by_reason[Exit.IO] == len(ports.console) + 3
    assert vm.exits.by_reason[Exit.MMIO] == 0


def test_trapped_reads_exit_once_each(vm: Vm) -> None:
    regs = Registers(vm, 16)
    regs.values[DEVICE_BASE + 0x10] = 0xCAFE_F00D
    vm.add_mmio(DEVICE_BASE, 0x1000, regs, "dev")
    ports = load_program(vm, "mmio_read", BootInfo(read_address=DEVICE_BASE + 0x10, count=7))
    vm.vcpus[0].run(timeout=5)
    assert ports.reports[0] == 0xCAFE_F00D
    assert regs.reads == 7
    assert vm.exits.mmio_by_label["dev"] == 7


def test_trapped_writes_exit_once_each_in_order(vm: Vm) -> None:
    regs = Registers(vm, 16)
    vm.add_mmio(DEVICE_BASE, 0x1000, regs, "dev")
    ports = load_program(vm, "mmio_write", BootInfo(read_address=DEVICE_BASE + 0x10, count=5))
    vm.vcpus[0].run(timeout=5)
    assert ports.result == 0
    assert regs.writes == [(DEVICE_BASE + 0x10, n) for n in (5, 4, 3, 2, 1)]
    assert vm.exits.mmio_by_label["dev"] == 5


def test_memory_slot_reads_cost_no_exit(vm: Vm) -> None:
    fd = os.memfd_create("regs")
    os.ftruncate(fd, 4096)
    regs = mmap.mmap(fd, 4096)
    os.close(fd)
    regs[0x10:0x14] = (0x1234_5678).to_bytes(4, "little")
    vm.map_memory(DEVICE_BASE, regs, label="regs")
    ports = load_program(vm, "mmio_read", BootInfo(read_address=DEVICE_BASE + 0x10, count=1000))
    vm.vcpus[0].run(timeout=5)
    assert ports.reports[0] == 0x1234_5678
    assert vm.exits.by_reason[Exit.MMIO] == 0
    assert vm.exits.total == 3  # the three debug-port writes, nothing else


def test_overlapping_slots_are_refused_and_nothing_changes(vm: Vm) -> None:
    mem = mmap.mmap(-1, 4096)
    with pytest.raises(VmmError, match="overlaps ram"):
        vm.map_memory(0x1000, mem, label="dev")
    assert [s.label for s in vm.slots] == ["ram"]


def test_unhandled_mmio_is_reported_with_the_address(vm: Vm) -> None:
    load_program(vm, "mmio_read", BootInfo(read_address=0xE000_0000, count=1))
    with pytest.raises(VmmError, match="0xe0000000"):
        vm.vcpus[0].run(timeout=5)


def test_interrupt_reaches_the_guest_isr_and_is_acked(vm: Vm) -> None:
    regs = Registers(vm, 17)
    vm.add_mmio(DEVICE_BASE, 0x1000, regs, "dev")
    ports = load_program(vm, "irq", BootInfo(
        gsi=17, level=True, arm_address=DEVICE_BASE, arm_value=1,
        ack_address=DEVICE_BASE + 4, ack_value=1))
    vm.vcpus[0].run(timeout=5)
    assert ports.result == 0
    assert ports.reports[0] == 1  # one interrupt taken
    assert regs.writes == [(DEVICE_BASE, 1), (DEVICE_BASE + 4, 1)]


def test_run_with_a_guest_that_never_finishes_times_out(vm: Vm) -> None:
    # the irq program with nothing to raise its line waits in hlt forever
    load_program(vm, "irq", BootInfo(gsi=18, level=True))
    assert vm.vcpus[0].run(timeout=0.3) is Exit.INTR


def test_irqfd_writes_each_reach_the_guest_isr(vm: Vm) -> None:
    trigger = os.eventfd(0, os.EFD_NONBLOCK)
    resample = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        vm.irqfd(trigger, 21, resample)
        seen = threading.Semaphore(0)
        ports = load_program(vm, "irq_loop", BootInfo(gsi=21, level=True, count=3))
        ports.on_report = lambda _value: seen.release()
        runner = threading.Thread(target=vm.vcpus[0].run, kwargs={"timeout": 10})
        runner.start()
        assert seen.acquire(timeout=5)  # the guest is set up and waiting
        for _ in range(3):
            os.eventfd_write(trigger, 1)
            assert seen.acquire(timeout=5)
        runner.join(10)
        assert ports.result == 0
        assert ports.reports == [0, 1, 2, 3]
        assert os.eventfd_read(resample) >= 1  # KVM resampled the level line
    finally:
        vm.irqfd_remove(trigger, 21)
        os.close(trigger)
        os.close(resample)
