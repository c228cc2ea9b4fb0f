"""The KVM ioctl numbers and layouts, pinned to the values of Linux's headers.

The expected numbers were printed by a C program including <linux/kvm.h> (Debian 12,
linux-libc-dev) on x86-64; they are the kernel ABI and never change.
"""

from __future__ import annotations

import pytest

from platpass.vmm import arch_x86, kvm_uapi
from platpass.vmm.kvm_uapi import Cap, Exit, Ioctl, IrqfdFlags, MemFlags, RunOffset


@pytest.mark.parametrize(("ioctl", "value"), [
    (Ioctl.GET_API_VERSION, 0xAE00),
    (Ioctl.CREATE_VM, 0xAE01),
    (Ioctl.CHECK_EXTENSION, 0xAE03),
    (Ioctl.GET_VCPU_MMAP_SIZE, 0xAE04),
    (Ioctl.CREATE_VCPU, 0xAE41),
    (Ioctl.SET_USER_MEMORY_REGION, 0x4020AE46),
    (Ioctl.SET_TSS_ADDR, 0xAE47),
    (Ioctl.SET_IDENTITY_MAP_ADDR, 0x4008AE48),
    (Ioctl.CREATE_IRQCHIP, 0xAE60),
    (Ioctl.IRQ_LINE, 0x4008AE61),
    (Ioctl.GET_IRQCHIP, 0xC208AE62),
    (Ioctl.SET_GSI_ROUTING, 0x4008AE6A),
    (Ioctl.IRQFD, 0x4020AE76),
    (Ioctl.CREATE_PIT2, 0x4040AE77),
    (Ioctl.RUN, 0xAE80),
])
def test_ioctl_numbers_match_the_header(ioctl: Ioctl, value: int) -> None:
    assert int(ioctl) == value


def test_x86_register_ioctls_match_the_header() -> None:
    assert arch_x86.GET_REGS == 0x8090AE81
    assert arch_x86.SET_REGS == 0x4090AE82
    assert arch_x86.GET_SREGS == 0x8138AE83
    assert arch_x86.SET_SREGS == 0x4138AE84
    assert kvm_uapi.io(0xA3) == arch_x86.GET_TSC_KHZ


def test_struct_sizes_match_the_header() -> None:
    assert kvm_uapi.USERSPACE_MEMORY_REGION.size == 0x20
    assert kvm_uapi.IRQFD.size == 0x20
    assert kvm_uapi.IRQ_ROUTING_ENTRY.size == 0x30
    assert kvm_uapi.IRQ_ROUTING.size == 8
    assert kvm_uapi.IRQCHIP_SIZE == 0x208
    assert arch_x86.REGS.size == 0x90
    assert arch_x86.SREGS_SIZE == 0x138
    assert arch_x86.SEGMENT.size == 0x18
    assert arch_x86.DTABLE.size == 0x10


def test_kvm_run_offsets_match_the_header() -> None:
    assert RunOffset.EXIT_REASON == 0x08
    assert RunOffset.IO_PORT == 0x22
    assert RunOffset.IO_COUNT == 0x24
    assert RunOffset.IO_DATA_OFFSET == 0x28
    assert RunOffset.MMIO_PHYS_ADDR == 0x20
    assert RunOffset.MMIO_DATA == 0x28
    assert RunOffset.MMIO_LEN == 0x30
    assert RunOffset.MMIO_IS_WRITE == 0x34
    assert kvm_uapi.RUN_IO.size == 16
    assert kvm_uapi.KVM_RUN_SIZE == 0x930


def test_constants_match_the_header() -> None:
    assert (Cap.IRQCHIP, Cap.USER_MEMORY, Cap.NR_MEMSLOTS, Cap.IRQ_ROUTING) == (0, 3, 10, 25)
    assert (Cap.IRQFD, Cap.IRQFD_RESAMPLE, Cap.SET_TSS_ADDR) == (32, 82, 4)
    assert (Exit.IO, Exit.HLT, Exit.MMIO, Exit.SHUTDOWN, Exit.FAIL_ENTRY) == (2, 5, 6, 8, 9)
    assert (Exit.INTERNAL_ERROR, Exit.SYSTEM_EVENT) == (17, 24)
    assert (IrqfdFlags.DEASSIGN, IrqfdFlags.RESAMPLE) == (1, 2)
    assert MemFlags.READONLY == 2


def test_sregs_round_trip_keeps_every_field() -> None:
    raw = bytes(range(256)) + bytes(range(arch_x86.SREGS_SIZE - 256))
    sregs = arch_x86.SpecialRegisters.unpack(raw)
    packed = sregs.pack()
    assert len(packed) == arch_x86.SREGS_SIZE
    assert arch_x86.SpecialRegisters.unpack(packed) == sregs
    assert sregs.gdt == (int.from_bytes(raw[0xC0:0xC8], "little"),
                         int.from_bytes(raw[0xC8:0xCA], "little"))
    assert sregs.control[0] == int.from_bytes(raw[0xE0:0xE8], "little")


def test_sregs_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(ValueError, match="312 bytes"):
        arch_x86.SpecialRegisters.unpack(b"\0" * 100)


def test_ioctl_size_field_overflow_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        kvm_uapi.iow(0x01, 1 << 14)
