"""Bare-metal x86 guest programs: building them with binutils, and the VMM's side of them.

The programs (``guests/*.S``, shipped as package data) act as guest device drivers. They
are assembled at run time with GNU ``as`` and linked with ``ld`` to a flat binary loaded at
:data:`LOAD_ADDRESS`; results are cached per source digest so a test session assembles
each program once. A program learns where its devices are from a :class:`BootInfo` block
(pointed to by ``%ebx``) and talks back through :class:`DebugPorts`: console bytes, a list
of reported 32-bit values, and a final result code that ends the run.

Guest physical layout: GDT at 0x1000 (written by the arch module), boot info at 0x6000,
the message string at 0x6100, the program at 0x10000, the stack growing down from 0x80000.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from platpass.errors import VmmError
from platpass.vmm.kvm import RunStopped, Vm

LOAD_ADDRESS = 0x10000
STACK_TOP = 0x80000
BOOT_INFO_ADDRESS = 0x6000
MESSAGE_ADDRESS = 0x6100
MESSAGE_LIMIT = 0x0F00

CONSOLE_PORT = 0xE9
REPORT_PORT = 0x500
EXIT_PORT = 0x504

BOOT_INFO_MAGIC = 0x50504249  # "PPBI"

#: The programs in ``guests/`` (without the ``.S``).
PROGRAMS = ("hello", "pl011", "mmio_read", "irq")


@dataclass(slots=True)
class BootInfo:
    """What a guest program is told at boot (word order matches ``guests/common.inc``)."""

    uart: int = 0
    rtc: int = 0
    gpio: int = 0
    gsi: int = 0
    level: bool = False
    arm_address: int = 0
    arm_value: int = 0
    ack_address: int = 0
    ack_value: int = 0
    read_address: int = 0
    count: int = 0
    delayed_eoi: bool = False
    message: bytes = b""

    def pack(self) -> bytes:
        words = (BOOT_INFO_MAGIC, self.uart, self.rtc, self.gpio, self.gsi, int(self.level),
                 self.arm_address, self.arm_value, self.ack_address, self.ack_value,
                 self.read_address, self.count, int(self.delayed_eoi), MESSAGE_ADDRESS)
        return struct.pack(f"<{len(words)}I", *words)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise VmmError(f"{name} (binutils) is needed to assemble guest programs: "
                       "run scripts/install")
    return path


_CACHE = Path(tempfile.gettempdir()) / "platpass-guests"


def build_program(name: str) -> bytes:
    """Assemble and link ``guests/<name>.S``; the flat binary to load at LOAD_ADDRESS.

    Raises VmmError when the program is unknown or binutils fails (with its output).
    """
    if name not in PROGRAMS:
        raise VmmError(f"no guest program {name!r}; known: {', '.join(PROGRAMS)}")
    pkg = resources.files("platpass.vmm") / "guests"
    source = (pkg / f"{name}.S").read_bytes()
    common = (pkg / "common.inc").read_bytes()
    digest = hashlib.sha256(source + b"\0" + common).hexdigest()[:16]
    out = _CACHE / f"{name}-{digest}.bin"
    if out.exists():
        return out.read_bytes()
    _CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_CACHE) as tmp:
        work = Path(tmp)
        (work / f"{name}.S").write_bytes(source)
        (work / "common.inc").write_bytes(common)
        steps = (
            [_tool("as"), "--32", "-I", str(work), "-o", str(work / "p.o"),
             str(work / f"{name}.S")],
            [_tool("ld"), "-m", "elf_i386", "-Ttext", hex(LOAD_ADDRESS), "-e", "_start",
             "-o", str(work / "p.elf"), str(work / "p.o")],
            [_tool("objcopy"), "-O", "binary", str(work / "p.elf"), str(work / "p.bin")],
        )
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise VmmError(f"building guest {name}: {Path(cmd[0]).name} failed: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        image = (work / "p.bin").read_bytes()
        (work / "p.bin").replace(out)
    return image


@dataclass(slots=True)
class DebugPorts:
    """The VMM end of the guest's debug ports: console text, reports, result code."""

    console: bytearray = field(default_factory=bytearray)
    reports: list[int] = field(default_factory=list)
    result: int | None = None

    def pio_read(self, port: int, size: int) -> int:
        return 0

    def pio_write(self, port: int, size: int, value: int) -> None:
        if port == CONSOLE_PORT:
            self.console.append(value & 0xFF)
        elif port == REPORT_PORT:
            self.reports.append(value)
        elif port == EXIT_PORT:
            self.result = value
            raise RunStopped(value)

    def attach(self, vm: Vm) -> None:
        vm.add_pio(CONSOLE_PORT, 1, self, "console")
        vm.add_pio(REPORT_PORT, 8, self, "debug")


def load_program(vm: Vm, name: str, info: BootInfo) -> DebugPorts:
    """Load ``name`` and its boot info into ``vm``, attach debug ports, boot vCPU 0."""
    image = build_program(name)
    if len(info.message) >= MESSAGE_LIMIT:
        raise VmmError(f"guest message is {len(info.message)} bytes; at most "
                       f"{MESSAGE_LIMIT - 1} fit")
    vm.write_guest(LOAD_ADDRESS, image)
    vm.write_guest(BOOT_INFO_ADDRESS, info.pack())
    vm.write_guest(MESSAGE_ADDRESS, info.message + b"\0")
    ports = DebugPorts()
    ports.attach(vm)
    vcpu = vm.vcpus[0] if vm.vcpus else vm.create_vcpu()
    vcpu.boot(LOAD_ADDRESS, STACK_TOP, BOOT_INFO_ADDRESS)
    return ports
