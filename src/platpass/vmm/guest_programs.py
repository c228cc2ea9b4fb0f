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
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from platpass.errors import VmmError
from platpass.host.safepath import require_trusted_directory
from platpass.inputs import run_tool
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
PROGRAMS = ("hello", "pl011", "mmio_read", "mmio_write", "irq", "irq_loop")


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
    #: ``(address, value)`` writes the irq program makes before arming (at most two).
    setup: tuple[tuple[int, int], ...] = ()
    #: The arming write adds the value read at ``read_address`` (an RTC alarm "now + n").
    arm_relative: bool = False

    def pack(self) -> bytes:
        if len(self.setup) > 2:
            raise VmmError(f"at most two set-up writes fit the boot info, got {len(self.setup)}")
        setup = [*self.setup, *[(0, 0)] * (2 - len(self.setup))]
        mode = int(self.delayed_eoi) | (int(self.arm_relative) << 1)
        words = (BOOT_INFO_MAGIC, self.uart, self.rtc, self.gpio, self.gsi, int(self.level),
                 self.arm_address, self.arm_value, self.ack_address, self.ack_value,
                 self.read_address, self.count, mode, MESSAGE_ADDRESS,
                 setup[0][0], setup[0][1], setup[1][0], setup[1][1])
        try:
            return struct.pack(f"<{len(words)}I", *words)
        except struct.error as err:
            raise VmmError(f"boot info value does not fit 32 bits: {err}") from err


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise VmmError(f"{name} (binutils) is needed to assemble guest programs: "
                       "run scripts/install")
    return path


def _cache_dir() -> Path:
    """The user's own cache (``$XDG_CACHE_HOME/platpass/guests``): never a fixed name in
    a shared directory such as /tmp, where another user could plant binaries or links
    for a root process to load."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "platpass" / "guests"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    require_trusted_directory(path)
    return path


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
    cache = _cache_dir()
    out = cache / f"{name}-{digest}.bin"
    if out.exists():
        return out.read_bytes()
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
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
            proc = run_tool(cmd, what=f"building guest {name}", error=VmmError)
            if proc.returncode != 0:
                output = (proc.stderr or proc.stdout).decode(errors="replace").strip()
                raise VmmError(f"building guest {name}: {Path(cmd[0]).name} failed: "
                               f"{output}")
        image = (work / "p.bin").read_bytes()
        (work / "p.bin").replace(out)
    return image


@dataclass(slots=True)
class DebugPorts:
    """The VMM end of the guest's debug ports: console text, reports, result code."""

    console: bytearray = field(default_factory=bytearray)
    reports: list[int] = field(default_factory=list)
    result: int | None = None
    #: Called on the vCPU thread with each reported value (benchmarks timestamp here).
    on_report: Callable[[int], None] | None = None

    def pio_read(self, port: int, size: int) -> int:
        return 0

    def pio_write(self, port: int, size: int, value: int) -> None:
        if port == CONSOLE_PORT:
            self.console.append(value & 0xFF)
        elif port == REPORT_PORT:
            self.reports.append(value)
            if self.on_report is not None:
                self.on_report(value)
        elif port == EXIT_PORT:
            self.result = value
            raise RunStopped(value)

    def attach(self, vm: Vm) -> None:
        vm.add_pio(CONSOLE_PORT, 1, self, "console")
        vm.add_pio(REPORT_PORT, 8, self, "debug")


def load_program(vm: Vm, name: str, info: BootInfo,
                 ports: DebugPorts | None = None) -> DebugPorts:
    """Load ``name`` and its boot info into ``vm`` and boot vCPU 0 at it.

    Pass the ``ports`` of an earlier program to run several programs in one VM (they are
    cleared); otherwise new debug ports are attached.
    """
    image = build_program(name)
    if len(info.message) >= MESSAGE_LIMIT:
        raise VmmError(f"guest message is {len(info.message)} bytes; at most "
                       f"{MESSAGE_LIMIT - 1} fit")
    vm.write_guest(LOAD_ADDRESS, image)
    vm.write_guest(BOOT_INFO_ADDRESS, info.pack())
    vm.write_guest(MESSAGE_ADDRESS, info.message + b"\0")
    if ports is None:
        ports = DebugPorts()
        ports.attach(vm)
    else:
        ports.console.clear()
        ports.reports.clear()
        ports.result = None
    vcpu = vm.vcpus[0] if vm.vcpus else vm.create_vcpu()
    vcpu.boot(LOAD_ADDRESS, STACK_TOP, BOOT_INFO_ADDRESS)
    return ports
