"""Wire values and C layouts from Linux's ``include/uapi/linux/kvm.h`` (the generic part).

Every ioctl number is computed here from its direction, number and the size of its argument
struct, exactly as the kernel's ``_IO``/``_IOR``/``_IOW``/``_IOWR`` macros do, so that a
layout mistake shows up as a wrong number in the pinning tests rather than as a mysterious
EINVAL from the kernel. Architecture-specific layouts (``kvm_regs``, ``kvm_sregs``) live in
the ``arch_*`` modules. Nothing here performs I/O.
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

KVMIO = 0xAE
KVM_API_VERSION = 12

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, nr: int, size: int) -> int:
    """The kernel's ``_IOC(dir, KVMIO, nr, size)`` (asm-generic layout, used by x86/arm64)."""
    if not 0 <= size < (1 << _IOC_SIZEBITS):
        raise ValueError(f"ioctl argument size {size} does not fit the size field")
    return (
        (direction << _IOC_DIRSHIFT)
        | (KVMIO << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


def io(nr: int) -> int:
    """``_IO(KVMIO, nr)``: no argument struct."""
    return _ioc(_IOC_NONE, nr, 0)


def ior(nr: int, size: int) -> int:
    """``_IOR(KVMIO, nr, T)`` with ``sizeof(T) == size``: the kernel writes the struct."""
    return _ioc(_IOC_READ, nr, size)


def iow(nr: int, size: int) -> int:
    """``_IOW(KVMIO, nr, T)``: the kernel reads the struct."""
    return _ioc(_IOC_WRITE, nr, size)


def iowr(nr: int, size: int) -> int:
    """``_IOWR(KVMIO, nr, T)``: both directions."""
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


# --- struct layouts ------------------------------------------------------------------------

#: struct kvm_userspace_memory_region { u32 slot, flags; u64 guest_phys_addr, memory_size,
#: userspace_addr; }
USERSPACE_MEMORY_REGION = struct.Struct("<IIQQQ")
#: struct kvm_irqfd { u32 fd, gsi, flags, resamplefd; u8 pad[16]; }
IRQFD = struct.Struct("<IIII16x")
#: struct kvm_irq_level { u32 irq; u32 level; }
IRQ_LEVEL = struct.Struct("<II")
#: struct kvm_irq_routing header { u32 nr, flags; } followed by entries
IRQ_ROUTING = struct.Struct("<II")
#: struct kvm_irq_routing_entry { u32 gsi, type, flags, pad; union { irqchip{u32 irqchip,
#: pin}; ... u32 pad[8]; } }
IRQ_ROUTING_ENTRY = struct.Struct("<IIIIII24x")
#: struct kvm_irqchip: u32 chip_id, pad; 512-byte union (used only for its size here)
IRQCHIP_SIZE = 8 + 512
#: struct kvm_pit_config { u32 flags; u32 pad[15]; }
PIT_CONFIG = struct.Struct("<I60x")


class Ioctl(IntEnum):
    """The ioctls the KVM client issues, on /dev/kvm, a VM fd or a vCPU fd."""

    # /dev/kvm
    GET_API_VERSION = io(0x00)
    CREATE_VM = io(0x01)
    CHECK_EXTENSION = io(0x03)
    GET_VCPU_MMAP_SIZE = io(0x04)
    # VM
    CREATE_VCPU = io(0x41)
    SET_USER_MEMORY_REGION = iow(0x46, USERSPACE_MEMORY_REGION.size)
    SET_TSS_ADDR = io(0x47)
    SET_IDENTITY_MAP_ADDR = iow(0x48, 8)
    CREATE_IRQCHIP = io(0x60)
    IRQ_LINE = iow(0x61, IRQ_LEVEL.size)
    GET_IRQCHIP = iowr(0x62, IRQCHIP_SIZE)
    SET_GSI_ROUTING = iow(0x6A, IRQ_ROUTING.size)
    IRQFD = iow(0x76, IRQFD.size)
    CREATE_PIT2 = iow(0x77, PIT_CONFIG.size)
    # vCPU
    RUN = io(0x80)


class Cap(IntEnum):
    """``KVM_CAP_*`` numbers for KVM_CHECK_EXTENSION."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    NR_MEMSLOTS = 10
    IRQ_ROUTING = 25
    IRQFD = 32
    SET_IDENTITY_MAP_ADDR = 37
    READONLY_MEM = 81
    IRQFD_RESAMPLE = 82
    IMMEDIATE_EXIT = 136


class Exit(IntEnum):
    """``kvm_run.exit_reason`` values (``KVM_EXIT_*``)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26


class IoDirection(IntEnum):
    """``kvm_run.io.direction``."""

    IN = 0
    OUT = 1


class MemFlags(IntFlag):
    """``kvm_userspace_memory_region.flags``."""

    LOG_DIRTY_PAGES = 1 << 0
    READONLY = 1 << 1


class IrqfdFlags(IntFlag):
    """``kvm_irqfd.flags``."""

    DEASSIGN = 1 << 0
    RESAMPLE = 1 << 1


class IrqRoutingType(IntEnum):
    """``kvm_irq_routing_entry.type``."""

    IRQCHIP = 1
    MSI = 2


# --- struct kvm_run: the offsets the run loop reads ----------------------------------------


class RunOffset(IntEnum):
    """Byte offsets inside the mmap'ed ``struct kvm_run`` (same on x86-64 and arm64)."""

    REQUEST_INTERRUPT_WINDOW = 0
    IMMEDIATE_EXIT = 1
    EXIT_REASON = 8
    #: start of the exit union
    EXIT_DATA = 32
    # KVM_EXIT_IO: u8 direction, u8 size, u16 port, u32 count, u64 data_offset
    IO_DIRECTION = 32
    IO_SIZE = 33
    IO_PORT = 34
    IO_COUNT = 36
    IO_DATA_OFFSET = 40
    # KVM_EXIT_MMIO: u64 phys_addr, u8 data[8], u32 len, u8 is_write
    MMIO_PHYS_ADDR = 32
    MMIO_DATA = 40
    MMIO_LEN = 48
    MMIO_IS_WRITE = 52
    # KVM_EXIT_INTERNAL_ERROR: u32 suberror, u32 ndata, u64 data[16]
    INTERNAL_SUBERROR = 32
    # KVM_EXIT_FAIL_ENTRY: u64 hardware_entry_failure_reason
    FAIL_ENTRY_REASON = 32


#: KVM_EXIT_IO layout at :attr:`RunOffset.IO_DIRECTION`.
RUN_IO = struct.Struct("<BBHIQ")
#: KVM_EXIT_MMIO layout at :attr:`RunOffset.MMIO_PHYS_ADDR` with its 8 data bytes skipped
#: (``phys_addr, len, is_write``): what the vCPU loop decodes on every MMIO exit; a write's
#: data is read at :attr:`RunOffset.MMIO_DATA`.
RUN_MMIO_ACCESS = struct.Struct("<Q8xIB")
#: Size of ``struct kvm_run`` up to the end of its sync-regs area (x86-64 header value).
KVM_RUN_SIZE = 0x930
