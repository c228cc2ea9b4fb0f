"""The x86-64 host part of the KVM client: CPU mode set-up and interrupt routing.

Everything a VM needs that differs between architectures sits here, behind four functions
the generic code calls (:func:`prepare_vm`, :func:`boot_vcpu`, :func:`gsi_for_line`,
:func:`irqchip_description`). An ``arch_arm64`` module would provide the same four: create
a vGIC through ``KVM_CREATE_DEVICE`` instead of ``KVM_CREATE_IRQCHIP``, set PC/SP through
``KVM_SET_ONE_REG`` after ``KVM_ARM_VCPU_INIT``, and map a device line to SPI ``32 + n``.

The guest runs in 32-bit protected mode with flat segments: no real-mode trampoline and no
page tables, so a bare-metal test program can touch device registers at their physical
addresses directly. The in-kernel irqchip gives a PIC, an IOAPIC (at 0xFEC00000, 24 pins)
and a local APIC per vCPU (at 0xFEE00000); KVM's default routing wires GSI n to IOAPIC pin
n, so a device line needs no ``KVM_SET_GSI_ROUTING``. Lines are given GSIs from 16 up,
which the legacy PIC does not see (GSI 0-15 also feed the PIC and ISA devices).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from platpass.vmm.kvm_uapi import ior, iow

if TYPE_CHECKING:
    from platpass.vmm.kvm import Vcpu, Vm

ARCH = "x86_64"

# --- asm/kvm.h layouts -----------------------------------------------------------------------

#: struct kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8-r15 rip rflags (18 x u64)
REGS = struct.Struct("<18Q")
#: struct kvm_segment { u64 base; u32 limit; u16 selector; u8 type, present, dpl, db, s, l, g,
#: avl, unusable, padding; }
SEGMENT = struct.Struct("<QIHBBBBBBBBBx")
#: struct kvm_dtable { u64 base; u16 limit; u16 padding[3]; }
DTABLE = struct.Struct("<QH6x")
_SREGS_TAIL = struct.Struct("<7Q4Q")  # cr0 cr2 cr3 cr4 cr8 efer apic_base, interrupt_bitmap
SREGS_SIZE = 8 * SEGMENT.size + 2 * DTABLE.size + _SREGS_TAIL.size

GET_REGS = ior(0x81, REGS.size)
SET_REGS = iow(0x82, REGS.size)
GET_SREGS = ior(0x83, SREGS_SIZE)
SET_SREGS = iow(0x84, SREGS_SIZE)
GET_TSC_KHZ = 0xAEA3  # _IO(KVMIO, 0xa3)

#: The TSS (3 pages) and identity-map page KVM needs on Intel hosts: unused guest-physical
#: space below 2 GiB (KVM_SET_TSS_ADDR takes the address as the ioctl's int argument).
TSS_ADDR = 0x7FFF_C000
IDENTITY_MAP_ADDR = 0x7FFF_B000
IOAPIC_BASE = 0xFEC0_0000
LAPIC_BASE = 0xFEE0_0000
IOAPIC_PINS = 24
FIRST_DEVICE_GSI = 16

#: Where the flat GDT is written in guest RAM, and its selectors.
GDT_ADDR = 0x1000
CODE_SELECTOR = 0x08
DATA_SELECTOR = 0x10

_CR0_PE = 1 << 0
_RFLAGS_RESERVED = 1 << 1


@dataclass(frozen=True, slots=True)
class Segment:
    """A ``struct kvm_segment``: the hidden part of a segment register."""

    base: int
    limit: int
    selector: int
    type: int
    present: int
    dpl: int
    db: int
    s: int
    l: int  # noqa: E741 - the kernel's field name
    g: int
    avl: int
    unusable: int

    def pack(self) -> bytes:
        return SEGMENT.pack(self.base, self.limit, self.selector, self.type, self.present,
                            self.dpl, self.db, self.s, self.l, self.g, self.avl,
                            self.unusable)

    @classmethod
    def unpack(cls, raw: bytes) -> Segment:
        return cls(*SEGMENT.unpack(raw))


@dataclass(frozen=True, slots=True)
class SpecialRegisters:
    """A ``struct kvm_sregs``, with the fields this client changes spelled out."""

    segments: tuple[Segment, ...]  # cs ds es fs gs ss tr ldt
    gdt: tuple[int, int]
    idt: tuple[int, int]
    control: tuple[int, ...]  # cr0 cr2 cr3 cr4 cr8 efer apic_base
    interrupt_bitmap: tuple[int, int, int, int]

    def pack(self) -> bytes:
        out = b"".join(seg.pack() for seg in self.segments)
        out += DTABLE.pack(*self.gdt) + DTABLE.pack(*self.idt)
        return out + _SREGS_TAIL.pack(*self.control, *self.interrupt_bitmap)

    @classmethod
    def unpack(cls, raw: bytes) -> SpecialRegisters:
        if len(raw) != SREGS_SIZE:
            raise ValueError(f"kvm_sregs is {SREGS_SIZE} bytes, got {len(raw)}")
        segs = tuple(Segment.unpack(raw[i * SEGMENT.size:(i + 1) * SEGMENT.size])
                     for i in range(8))
        off = 8 * SEGMENT.size
        gdt = DTABLE.unpack_from(raw, off)
        idt = DTABLE.unpack_from(raw, off + DTABLE.size)
        tail = _SREGS_TAIL.unpack_from(raw, off + 2 * DTABLE.size)
        return cls(segs, (gdt[0], gdt[1]), (idt[0], idt[1]), tail[:7],
                   (tail[7], tail[8], tail[9], tail[10]))


def _flat(selector: int, code: bool) -> Segment:
    """A 4 GiB flat 32-bit segment (code: execute/read accessed; data: read/write accessed)."""
    return Segment(base=0, limit=0xFFFF_FFFF, selector=selector, type=0xB if code else 0x3,
                   present=1, dpl=0, db=1, s=1, l=0, g=1, avl=0, unusable=0)


def gdt_bytes() -> bytes:
    """The flat GDT matching :func:`_flat`: null, code (0x08), data (0x10).

    The guest's interrupt gates name ``CODE_SELECTOR``, and an interrupt or ``iret`` reloads
    CS from this table, so it must exist in guest RAM and agree with the loaded segments.
    The accessed bits are preset: otherwise the CPU writes the descriptor on the first
    load, and under nested KVM that write can send ``iret`` to KVM's instruction emulator,
    which cannot emulate a protected-mode ``iret`` (seen here as KVM_EXIT_INTERNAL_ERROR).
    """
    null = 0
    code = 0x00CF_9B00_0000_FFFF
    data = 0x00CF_9300_0000_FFFF
    return struct.pack("<3Q", null, code, data)


# --- the four hooks the generic VM code calls ------------------------------------------------


def prepare_vm(vm: Vm) -> None:
    """Before any vCPU: the TSS/identity pages and the in-kernel PIC + IOAPIC (+ LAPICs)."""
    from platpass.vmm.kvm_uapi import Ioctl

    vm.ioctl(Ioctl.SET_TSS_ADDR, TSS_ADDR)
    vm.ioctl(Ioctl.SET_IDENTITY_MAP_ADDR, struct.pack("<Q", IDENTITY_MAP_ADDR))
    vm.ioctl(Ioctl.CREATE_IRQCHIP, 0)


def boot_vcpu(vcpu: Vcpu, entry: int, stack_top: int, boot_info: int) -> None:
    """Put ``vcpu`` in flat 32-bit protected mode at ``entry``; ``ebx`` = ``boot_info``.

    Writes the GDT into guest RAM at :data:`GDT_ADDR` (RAM must cover it).
    """
    vcpu.vm.write_guest(GDT_ADDR, gdt_bytes())
    sregs = SpecialRegisters.unpack(vcpu.ioctl_buffer(GET_SREGS, SREGS_SIZE))
    code = _flat(CODE_SELECTOR, code=True)
    data = _flat(DATA_SELECTOR, code=False)
    segs = list(sregs.segments)
    segs[0] = code
    for i in (1, 2, 3, 4, 5):
        segs[i] = data
    control = list(sregs.control)
    control[0] = (control[0] | _CR0_PE) & ~(1 << 31)  # protected mode, no paging
    sregs = replace(sregs, segments=tuple(segs), gdt=(GDT_ADDR, len(gdt_bytes()) - 1),
                    control=tuple(control))
    vcpu.ioctl_buffer(SET_SREGS, sregs.pack())
    regs = [0] * 18
    regs[1] = boot_info      # rbx
    regs[6] = stack_top      # rsp
    regs[16] = entry         # rip
    regs[17] = _RFLAGS_RESERVED
    vcpu.ioctl_buffer(SET_REGS, REGS.pack(*regs))


def gsi_for_line(line: int) -> int:
    """The GSI (= IOAPIC pin) the ``line``-th device interrupt of the VM is wired to."""
    gsi = FIRST_DEVICE_GSI + line
    if gsi >= IOAPIC_PINS:
        from platpass.errors import VmmError

        raise VmmError(f"device line {line}: the IOAPIC has only {IOAPIC_PINS} pins "
                       f"(GSIs {FIRST_DEVICE_GSI}-{IOAPIC_PINS - 1} are free for devices)")
    return gsi


def irqchip_description() -> str:
    """What the guest's interrupt controller is, for reports."""
    return (f"in-kernel PIC + IOAPIC@{IOAPIC_BASE:#x} + LAPIC@{LAPIC_BASE:#x}; "
            f"device lines on GSI {FIRST_DEVICE_GSI}+")


def read_registers(vcpu: Vcpu) -> dict[str, int]:
    """A few registers for error evidence (rip, rsp, rflags, cr0)."""
    regs = REGS.unpack(vcpu.ioctl_buffer(GET_REGS, REGS.size))
    return {"rip": regs[16], "rsp": regs[6], "rflags": regs[17], "rax": regs[0]}
