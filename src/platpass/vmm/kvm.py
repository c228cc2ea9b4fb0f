"""A small KVM virtual machine driven from Python through ``/dev/kvm`` ioctls and ``mmap``.

What it promises: a VM with guest RAM, an in-kernel interrupt controller, memory slots that
can map any mmap'able file (device registers included) straight into the guest, irqfds
(with resamplefds for level lines), and vCPUs whose exits are dispatched to port-I/O and
MMIO handlers and counted by kind. The architecture-specific part (CPU mode, irqchip,
GSI numbering) is in :mod:`platpass.vmm.arch_x86`; this module does not know which
architecture it runs on beyond picking that module.

Every ioctl goes through :func:`kvm_ioctl`, which turns ``OSError`` into
:class:`~platpass.errors.VmmError` keeping the errno and naming the ioctl.

Threads: a vCPU runs in the thread that calls :meth:`Vcpu.run`; handlers run in that
thread. :meth:`Vcpu.kick` (any thread) makes a blocked ``KVM_RUN`` return, which is how a
run with a deadline ends when the guest sits in ``hlt`` inside the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import platform
import signal
import struct
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Protocol

from platpass.errors import VmmError
from platpass.vmm import arch_x86
from platpass.vmm.kvm_uapi import (
    IRQ_LEVEL,
    IRQFD,
    KVM_API_VERSION,
    RUN_IO,
    RUN_MMIO_ACCESS,
    USERSPACE_MEMORY_REGION,
    Cap,
    Exit,
    Ioctl,
    IoDirection,
    IrqfdFlags,
    MemFlags,
    RunOffset,
)

# The run loop's hot constants as plain ints (an IntEnum attribute or call per exit costs
# more than the rest of the decode), all taken from the uapi module.
_RUN = int(Ioctl.RUN)
_EXIT_REASON = int(RunOffset.EXIT_REASON)
_EXIT_DATA = int(RunOffset.EXIT_DATA)
_IMMEDIATE_EXIT = int(RunOffset.IMMEDIATE_EXIT)
_MMIO_PHYS_ADDR = int(RunOffset.MMIO_PHYS_ADDR)
_MMIO_DATA = int(RunOffset.MMIO_DATA)
_IO_DIRECTION = int(RunOffset.IO_DIRECTION)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: Access width -> (the mask of a value of that width, its little-endian layout): an MMIO
#: read's answer goes into ``kvm_run`` with one pack_into, no bytes object.
_MMIO_VALUE = {size: ((1 << (8 * size)) - 1, struct.Struct("<" + code))
               for size, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))}
#: ``exit_reason`` value -> :class:`Exit`, looked up without constructing the enum.
_EXITS: dict[int, Exit] = {int(e): e for e in Exit}
_EXIT_MMIO = Exit.MMIO
_EXIT_IO = Exit.IO
_OUT = int(IoDirection.OUT)
_IN = int(IoDirection.IN)

#: Host machine name -> the module holding that architecture's part of the client. Only
#: x86-64 exists; an ``arch_arm64`` providing the same hooks would be added here.
ARCH_MODULES: dict[str, ModuleType] = {"x86_64": arch_x86, "AMD64": arch_x86}


def host_arch(machine: str | None = None) -> ModuleType:
    """The arch module for this host (``machine`` overrides ``platform.machine()``).

    Raises VmmError naming the host when there is none.
    """
    name = machine or platform.machine()
    module = ARCH_MODULES.get(name)
    if module is None:
        raise VmmError(f"the KVM client has no support for {name} hosts yet "
                       f"(supported: {', '.join(sorted(ARCH_MODULES))})")
    return module


KVM_DEVICE = "/dev/kvm"
PAGE_SIZE = mmap.PAGESIZE
#: The signal :meth:`Vcpu.kick` sends to a vCPU thread to interrupt ``KVM_RUN``.
KICK_SIGNAL = signal.SIGRTMIN + 3 if hasattr(signal, "SIGRTMIN") else signal.SIGUSR2


def kvm_ioctl(fd: int, request: int, arg: int | bytes | bytearray = 0, *, what: str = "") -> int:
    """``ioctl(fd, request, arg)``; integer result, or for buffers the kernel's copy-back.

    Raises VmmError (with the errno) when the kernel refuses.
    """
    try:
        return fcntl.ioctl(fd, request, arg)  # type: ignore[return-value]
    except OSError as err:
        name = what or _ioctl_name(request)
        raise VmmError(f"{name} failed: {os.strerror(err.errno or 0)} "
                       f"(errno {err.errno})") from err


def _ioctl_name(request: int) -> str:
    try:
        return f"KVM_{Ioctl(request).name}"
    except ValueError:
        return f"ioctl {request:#x}"


def kvm_unavailable_reason(path: str = KVM_DEVICE) -> str | None:
    """None when ``path`` can run VMs here; otherwise why not (for skips and the demo)."""
    if platform.machine() not in ARCH_MODULES:
        return (f"the KVM client supports {', '.join(sorted(ARCH_MODULES))} hosts; this "
                f"host is {platform.machine()}")
    if not os.path.exists(path):
        return f"{path} does not exist (no KVM on this host, or not passed into the container)"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return f"cannot open {path}: {err.strerror}"
    try:
        version = fcntl.ioctl(fd, Ioctl.GET_API_VERSION, 0)
    except OSError as err:
        return f"{path}: KVM_GET_API_VERSION failed: {err.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return f"{path}: KVM API version {version}, expected {KVM_API_VERSION}"
    return None


def buffer_address(buf: mmap.mmap) -> int:
    """The userspace address of an mmap object's first byte (for KVM memory slots)."""
    view = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view


class PioHandler(Protocol):
    """Handles guest ``in``/``out`` on a port range."""

    def pio_read(self, port: int, size: int) -> int: ...

    def pio_write(self, port: int, size: int, value: int) -> None: ...


class MmioHandler(Protocol):
    """Handles guest loads/stores that exit (addresses not backed by a memory slot)."""

    def mmio_read(self, address: int, size: int) -> int: ...

    def mmio_write(self, address: int, size: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class MemorySlot:
    """One ``KVM_SET_USER_MEMORY_REGION`` slot, with what keeps its backing alive."""

    slot: int
    guest_address: int
    size: int
    flags: MemFlags
    backing: mmap.mmap
    label: str


@dataclass(slots=True)
class _Range:
    start: int
    size: int
    handler: object
    label: str


class _RangeMap:
    """Non-overlapping address ranges -> handler, looked up by bisection."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ranges: list[_Range] = []
        #: The range found last: a guest polling one register hits it every time.
        self._last: _Range | None = None

    def overlapping(self, start: int, size: int) -> _Range | None:
        for r in self._ranges:
            if start < r.start + r.size and r.start < start + size:
                return r
        return None

    def add(self, start: int, size: int, handler: object, label: str) -> None:
        if size <= 0:
            raise VmmError(f"{label}: empty range at {start:#x}")
        r = self.overlapping(start, size)
        if r is not None:
            raise VmmError(f"{label} [{start:#x}+{size:#x}) overlaps {r.label} "
                           f"[{r.start:#x}+{r.size:#x})")
        i = bisect_right(self._starts, start)
        self._starts.insert(i, start)
        self._ranges.insert(i, _Range(start, size, handler, label))

    def remove(self, start: int) -> None:
        i = self._starts.index(start)
        del self._starts[i]
        del self._ranges[i]
        self._last = None

    def find(self, address: int) -> _Range | None:
        last = self._last
        if last is not None and last.start <= address < last.start + last.size:
            return last
        i = bisect_right(self._starts, address) - 1
        if i >= 0:
            r = self._ranges[i]
            if address < r.start + r.size:
                self._last = r
                return r
        return None


@dataclass(slots=True)
class ExitCounters:
    """How many exits of each kind a VM's vCPUs took, and where MMIO/PIO exits went."""

    by_reason: Counter[Exit] = field(default_factory=Counter)
    mmio_by_label: Counter[str] = field(default_factory=Counter)
    pio_by_port: Counter[int] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def snapshot(self) -> ExitCounters:
        return ExitCounters(Counter(self.by_reason), Counter(self.mmio_by_label),
                            Counter(self.pio_by_port))

    def since(self, earlier: ExitCounters) -> ExitCounters:
        """Exits taken after ``earlier`` was snapshotted."""
        return ExitCounters(self.by_reason - earlier.by_reason,
                            self.mmio_by_label - earlier.mmio_by_label,
                            self.pio_by_port - earlier.pio_by_port)

    def describe(self) -> str:
        parts = [f"{reason.name}={count}" for reason, count in sorted(self.by_reason.items())]
        return ", ".join(parts) or "none"


class Kvm:
    """An open ``/dev/kvm``."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise VmmError(f"cannot open {path}: {err.strerror}") from err
        version = kvm_ioctl(self.fd, Ioctl.GET_API_VERSION)
        if version != KVM_API_VERSION:
            os.close(self.fd)
            raise VmmError(f"{path}: KVM API version {version}, expected {KVM_API_VERSION}")
        self.vcpu_mmap_size = kvm_ioctl(self.fd, Ioctl.GET_VCPU_MMAP_SIZE)

    def check_extension(self, cap: Cap) -> int:
        """``KVM_CHECK_EXTENSION``: 0 when absent, else a capability-specific value."""
        return kvm_ioctl(self.fd, Ioctl.CHECK_EXTENSION, int(cap))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vm:
    """A KVM VM: guest RAM, memory slots, in-kernel irqchip, irqfds, exit handlers.

    Raises VmmError when KVM refuses a step; a half-built VM is closed before raising.
    """

    def __init__(self, ram_size: int = 2 << 20, *, kvm_path: str = KVM_DEVICE) -> None:
        self.arch = host_arch()
        self.kvm = Kvm(kvm_path)
        self.fd = -1
        self.exits = ExitCounters()
        self.slots: list[MemorySlot] = []
        self.vcpus: list[Vcpu] = []
        self._mmio = _RangeMap()
        self._pio = _RangeMap()
        self._irqfds: list[tuple[int, int, int | None]] = []
        self._lines = 0
        self._closed = False
        try:
            for cap in (Cap.IRQCHIP, Cap.USER_MEMORY, Cap.IRQFD, Cap.IRQFD_RESAMPLE):
                if not self.kvm.check_extension(cap):
                    raise VmmError(f"KVM lacks KVM_CAP_{cap.name}")
            self.fd = kvm_ioctl(self.kvm.fd, Ioctl.CREATE_VM, 0)
            self.arch.prepare_vm(self)
            self.ram = self.add_ram(0, ram_size)
        except BaseException:
            self.close()
            raise

    # -- plumbing ---------------------------------------------------------------------------

    def ioctl(self, request: int, arg: int | bytes = 0) -> int:
        """An ioctl on the VM fd (integer argument or input struct)."""
        result = kvm_ioctl(self.fd, request, arg)
        return result if isinstance(result, int) else 0

    # -- memory -----------------------------------------------------------------------------

    def add_ram(self, guest_address: int, size: int) -> MemorySlot:
        """Anonymous guest RAM at ``guest_address`` (page-aligned, page-multiple)."""
        mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                        prot=mmap.PROT_READ | mmap.PROT_WRITE)
        return self.map_memory(guest_address, mem, label="ram")

    def map_memory(self, guest_address: int, backing: mmap.mmap, *, label: str,
                   readonly: bool = False) -> MemorySlot:
        """Make ``backing`` (any mmap: RAM or device registers) guest memory.

        Guest loads and stores to it then run at memory speed with no exit (reads of a
        read-only slot too; its writes exit as MMIO).
        """
        size = len(backing)
        if guest_address % PAGE_SIZE or size % PAGE_SIZE or size == 0:
            raise VmmError(f"{label}: slot [{guest_address:#x}+{size:#x}) is not whole pages")
        self._check_free(guest_address, size, label)
        clash = self._mmio.overlapping(guest_address, size)
        if clash is not None:
            raise VmmError(f"{label}: slot [{guest_address:#x}+{size:#x}) overlaps "
                           f"{clash.label} at {clash.start:#x}")
        used = {s.slot for s in self.slots}
        number = next(i for i in range(len(used) + 1) if i not in used)
        flags = MemFlags.READONLY if readonly else MemFlags(0)
        self.ioctl(Ioctl.SET_USER_MEMORY_REGION, USERSPACE_MEMORY_REGION.pack(
            number, int(flags), guest_address, size, buffer_address(backing)))
        slot = MemorySlot(number, guest_address, size, flags, backing, label)
        self.slots.append(slot)
        return slot

    def unmap_memory(self, slot: MemorySlot) -> None:
        """Remove a slot (size 0, as the API asks); its mmap is left to the caller."""
        self.ioctl(Ioctl.SET_USER_MEMORY_REGION, USERSPACE_MEMORY_REGION.pack(
            slot.slot, int(slot.flags), slot.guest_address, 0, 0))
        self.slots.remove(slot)

    def write_guest(self, guest_address: int, data: bytes) -> None:
        """Copy ``data`` into guest RAM (VmmError outside the RAM slot)."""
        offset = guest_address - self.ram.guest_address
        if offset < 0 or offset + len(data) > self.ram.size:
            raise VmmError(f"guest write [{guest_address:#x}+{len(data):#x}) is outside RAM")
        self.ram.backing[offset:offset + len(data)] = data

    def read_guest(self, guest_address: int, size: int) -> bytes:
        """Copy ``size`` bytes out of guest RAM."""
        offset = guest_address - self.ram.guest_address
        if offset < 0 or offset + size > self.ram.size:
            raise VmmError(f"guest read [{guest_address:#x}+{size:#x}) is outside RAM")
        return bytes(self.ram.backing[offset:offset + size])

    # -- exits ------------------------------------------------------------------------------

    def add_mmio(self, address: int, size: int, handler: MmioHandler, label: str) -> None:
        """Send guest accesses to ``[address, address+size)`` to ``handler``.

        VmmError when the range overlaps a memory slot (the guest would never exit there)
        or another MMIO range.
        """
        self._check_free(address, size, label)
        self._mmio.add(address, size, handler, label)

    def _check_free(self, address: int, size: int, label: str) -> None:
        for s in self.slots:
            if address < s.guest_address + s.size and s.guest_address < address + size:
                raise VmmError(f"{label}: [{address:#x}+{size:#x}) overlaps {s.label} "
                               f"at {s.guest_address:#x}")

    def remove_mmio(self, address: int) -> None:
        """Forget the MMIO range starting at ``address`` (ValueError when there is none)."""
        self._mmio.remove(address)

    def add_pio(self, port: int, count: int, handler: PioHandler, label: str) -> None:
        """Send guest ``in``/``out`` on ``[port, port+count)`` to ``handler``."""
        self._pio.add(port, count, handler, label)

    # -- interrupts -------------------------------------------------------------------------

    def allocate_gsi(self) -> int:
        """The guest interrupt line for the next device interrupt (arch numbering)."""
        gsi: int = self.arch.gsi_for_line(self._lines)
        self._lines += 1
        return gsi

    def irqfd(self, trigger_fd: int, gsi: int, resample_fd: int | None = None) -> None:
        """``KVM_IRQFD``: a write to ``trigger_fd`` raises ``gsi`` in the guest.

        With ``resample_fd`` the line is level: KVM holds it asserted until the guest's EOI,
        then lowers it and signals ``resample_fd`` (the device unmasks and re-fires if the
        source is still asserted). Without it, each write is an edge.
        """
        flags = IrqfdFlags(0)
        if resample_fd is not None:
            flags |= IrqfdFlags.RESAMPLE
        self.ioctl(Ioctl.IRQFD, IRQFD.pack(trigger_fd, gsi, int(flags),
                                          resample_fd if resample_fd is not None else 0))
        self._irqfds.append((trigger_fd, gsi, resample_fd))

    def irqfd_remove(self, trigger_fd: int, gsi: int) -> None:
        """Detach an irqfd (``KVM_IRQFD_FLAG_DEASSIGN``)."""
        self.ioctl(Ioctl.IRQFD, IRQFD.pack(trigger_fd, gsi, int(IrqfdFlags.DEASSIGN), 0))
        self._irqfds = [e for e in self._irqfds if e[:2] != (trigger_fd, gsi)]

    def set_irq_line(self, gsi: int, level: bool) -> None:
        """``KVM_IRQ_LINE``: drive a GSI from userspace (tests and the in-process baseline)."""
        self.ioctl(Ioctl.IRQ_LINE, IRQ_LEVEL.pack(gsi, int(level)))

    # -- vCPUs ------------------------------------------------------------------------------

    def create_vcpu(self) -> Vcpu:
        """A new vCPU (index = number created so far)."""
        vcpu = Vcpu(self, len(self.vcpus))
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        """Tear the VM down: vCPUs, irqfds, slots, fds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()
        if self.fd >= 0:
            for trigger_fd, gsi, _res in list(self._irqfds):
                with contextlib.suppress(VmmError):
                    self.irqfd_remove(trigger_fd, gsi)
            os.close(self.fd)
            self.fd = -1
        for slot in self.slots:
            if slot.label == "ram":
                slot.backing.close()
        self.slots.clear()
        self.kvm.close()

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunStopped(Exception):
    """Raised by a handler to end :meth:`Vcpu.run` (the guest reported it is done)."""


_kick_installed = False


def _install_kick_handler() -> None:
    """Make :data:`KICK_SIGNAL` harmless (interrupts syscalls, runs no Python code)."""
    global _kick_installed
    if _kick_installed:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(KICK_SIGNAL, lambda _sig, _frame: None)
        signal.siginterrupt(KICK_SIGNAL, True)
        _kick_installed = True


_install_kick_handler()  # at import, normally on the main thread (signal.signal needs it)


class Vcpu:
    """One vCPU: its fd, its mmap'ed ``kvm_run`` and a run loop that dispatches exits."""

    def __init__(self, vm: Vm, index: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = kvm_ioctl(vm.fd, Ioctl.CREATE_VCPU, index)
        self.run_area = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size, flags=mmap.MAP_SHARED,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._thread: int | None = None
        self._stopping = False
        _install_kick_handler()

    def ioctl_buffer(self, request: int, arg: bytes | int) -> bytes:
        """An ioctl whose argument is a struct: returns the kernel's copy of it.

        For ``_IOR`` requests pass the struct size as ``arg``.
        """
        buf = bytearray(arg)  # bytes: the input struct; int: a zeroed buffer of that size
        kvm_ioctl(self.fd, request, buf, what=f"vCPU ioctl {request:#x}")
        return bytes(buf)

    def boot(self, entry: int, stack_top: int, boot_info: int = 0) -> None:
        """Start the vCPU at ``entry`` (architecture's boot mode; see the arch module)."""
        self.vm.arch.boot_vcpu(self, entry, stack_top, boot_info)

    def registers(self) -> dict[str, int]:
        regs: dict[str, int] = self.vm.arch.read_registers(self)
        return regs

    def kick(self) -> None:
        """Make the current or next ``KVM_RUN`` return at once (thread-safe)."""
        self._stopping = True
        self.run_area[_IMMEDIATE_EXIT] = 1
        thread = self._thread
        # Without the handler the signal's default action would end the process; then a
        # KVM_RUN already blocked in the kernel only returns at its next exit.
        if thread is not None and _kick_installed:
            with contextlib.suppress(ProcessLookupError):
                signal.pthread_kill(thread, KICK_SIGNAL)

    def run(self, timeout: float = 5.0,
            on_exit: Callable[[Exit], None] | None = None) -> Exit | None:
        """Run until a handler raises :class:`RunStopped` (returns None), the guest shuts
        down, halts without an in-kernel wake-up, or ``timeout`` seconds pass.

        Returns the exit that ended the run (INTR for the timeout/kick). A guest waiting
        in ``hlt`` is interrupted by :data:`KICK_SIGNAL`, whose handler this module installs
        when first imported on the main thread (the only thread that may install one).
        ``on_exit`` sees every exit reason before it is handled (tracing, tests).
        Raises VmmError for entry failures, internal errors and unhandled exits, with the
        vCPU's rip as evidence.
        """
        self._thread = threading.get_ident()
        self._stopping = False
        self.run_area[_IMMEDIATE_EXIT] = 0
        timer = threading.Timer(timeout, self.kick)
        timer.daemon = True
        timer.start()
        by_reason = self.vm.exits.by_reason
        area = self.run_area
        # Locals: this loop runs once per guest exit. An MMIO exit (a trapped register) is
        # decoded and answered here, without a call per layer: the access from kvm_run's
        # offsets, the handler by address, the read's value packed straight back.
        ioctl, fd, exits, exit_reason = fcntl.ioctl, self.fd, _EXITS, _U32.unpack_from
        mmio_access = RUN_MMIO_ACCESS.unpack_from
        find = self.vm._mmio.find
        mmio_by_label = self.vm.exits.mmio_by_label
        value_layouts = _MMIO_VALUE
        try:
            while True:
                try:
                    ioctl(fd, _RUN, 0)
                except OSError as err:
                    if err.errno not in (errno.EINTR, errno.EAGAIN):
                        raise VmmError(f"KVM_RUN failed: {err.strerror}") from err
                    reason = Exit.INTR
                else:
                    code = exit_reason(area, _EXIT_REASON)[0]
                    found = exits.get(code)
                    if found is None:
                        raise VmmError(f"unknown KVM exit reason {code}")
                    reason = found
                by_reason[reason] += 1
                if on_exit is not None:
                    on_exit(reason)
                if reason is _EXIT_MMIO:
                    address, length, is_write = mmio_access(area, _MMIO_PHYS_ADDR)
                    target = find(address)
                    if target is None:
                        raise VmmError(
                            f"vCPU {self.index}: guest {'wrote' if is_write else 'read'} "
                            f"{length} bytes at {address:#x}, where nothing is mapped")
                    mmio_by_label[target.label] += 1
                    handler: MmioHandler = target.handler  # type: ignore[assignment]
                    if is_write:
                        handler.mmio_write(address, length, int.from_bytes(
                            area[_MMIO_DATA:_MMIO_DATA + length], "little"))
                        continue
                    value = handler.mmio_read(address, length)
                    layout = value_layouts.get(length)
                    if layout is not None:
                        layout[1].pack_into(area, _MMIO_DATA, value & layout[0])
                    else:  # not a width a load has; kept general all the same
                        area[_MMIO_DATA:_MMIO_DATA + length] = (
                            value & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
                elif reason is _EXIT_IO:
                    self._pio()
                elif reason is Exit.INTR:
                    if self._stopping:
                        return Exit.INTR
                elif reason in (Exit.HLT, Exit.SHUTDOWN, Exit.SYSTEM_EVENT):
                    return reason
                else:
                    raise VmmError(self._exit_evidence(reason))
        except RunStopped:
            return None
        finally:
            timer.cancel()
            self._thread = None
            area[_IMMEDIATE_EXIT] = 0

    def _exit_evidence(self, reason: Exit) -> str:
        (detail,) = _U64.unpack_from(self.run_area, _EXIT_DATA)
        try:
            regs = ", ".join(f"{k}={v:#x}" for k, v in self.registers().items())
        except VmmError:
            regs = "registers unavailable"
        return f"vCPU {self.index}: unhandled exit {reason.name} (data {detail:#x}; {regs})"

    def _pio(self) -> None:
        area = self.run_area
        direction, size, port, count, data_offset = RUN_IO.unpack_from(area, _IO_DIRECTION)
        target = self.vm._pio.find(port)
        if target is None:
            # Unclaimed ports behave like an empty ISA bus: reads all-ones, writes dropped.
            if direction == _IN:
                area[data_offset:data_offset + size * count] = b"\xff" * (size * count)
            return
        self.vm.exits.pio_by_port[port] += 1
        handler: PioHandler = target.handler  # type: ignore[assignment]
        for i in range(count):
            at = data_offset + i * size
            if direction == _OUT:
                handler.pio_write(port, size, int.from_bytes(area[at:at + size], "little"))
            else:
                value = handler.pio_read(port, size) & ((1 << (8 * size)) - 1)
                area[at:at + size] = value.to_bytes(size, "little")

    def tsc_khz(self) -> int:
        """The guest TSC frequency in kHz (to turn guest ``rdtsc`` deltas into time)."""
        return kvm_ioctl(self.fd, self.vm.arch.GET_TSC_KHZ, 0, what="KVM_GET_TSC_KHZ")

    def close(self) -> None:
        if self.fd >= 0:
            self.run_area.close()
            os.close(self.fd)
            self.fd = -1

