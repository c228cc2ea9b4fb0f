"""Which PCI identity to give a device so that an *unmodified* Linux guest binds a driver
that drives it correctly — per device family and per register layout.

A PCI glue driver does not read a device tree: its ID table entry fixes the register
spacing, the access width and the input clock it assumes (for ``8250_pci``: the board's
``reg_shift``, byte accesses through ``UPIO_MEM`` on a memory BAR, ``uartclk = base_baud *
16``). So an ID is only right for a device whose layout matches the entry exactly; a layout
no entry matches is refused with the reason, never given the nearest ID (a wrong spacing
drives the wrong registers; a wrong clock puts the wrong line rate on a real wire).

Entries are facts read from the Linux sources named in each entry and checked against a
real guest where ``verified`` says so. :data:`OTHER_FAMILIES` records, for the families
platpass supports without an entry, whether Linux has a PCI driver a guest would bind.

Pure logic: no I/O.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from platpass.errors import VfioError
from platpass.firmware.model import DeviceNode
from platpass.vfio_device.pci.config_space import Identity

#: PCI class code of a 16550-compatible serial controller (07h/00h/02h).
CLASS_SERIAL_16550 = 0x070002
#: Serial bus controller, other (0Ch/80h).
CLASS_SERIAL_BUS_OTHER = 0x0C8000
#: "Device does not fit any defined class" (FFh), for an explicit ID outside the table.
CLASS_UNASSIGNED = 0xFF0000


class PciIdError(VfioError):
    """No PCI identity fits the device (or the one asked for does not); the message says
    why. An errno-carrying VfioError (EINVAL) so a transport could report it as such."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, message)


@dataclass(frozen=True, slots=True)
class Layout:
    """The register layout a driver entry implies (or a device has).

    ``clock_hz`` None means the entry does not care (or the device does not say).
    """

    reg_shift: int
    io_width: int
    clock_hz: int | None

    def __str__(self) -> str:
        clock = "unknown clock" if self.clock_hz is None else f"{self.clock_hz} Hz"
        return f"reg-shift {self.reg_shift}, {self.io_width}-byte accesses, {clock}"


@dataclass(frozen=True, slots=True)
class PciIdEntry:
    """One identity that a named Linux driver binds, for one family and layout."""

    #: platpass driver names (``PlatformDriver.name``) the entry may serve.
    drivers: tuple[str, ...]
    identity: Identity
    layout: Layout
    #: The guest driver and ID-table entry that binds it (where to read it).
    linux_driver: str
    #: What proved it binds and works (empty: read from the source, not run).
    verified: str
    #: Where the driver expects the device's registers inside BAR0 (the BAR is sized to
    #: hold them there; the bytes before them read as zero and ignore writes).
    bar0_offset: int = 0


#: The table. ``auto`` picks the first verified entry whose driver and layout match.
PCI_ID_TABLE: tuple[PciIdEntry, ...] = (
    PciIdEntry(
        drivers=("ns16550",),
        # Xircom RBM56G CardBus modem: 8250_pci.c serial_pci_tbl entry
        # {XIRCOM, RBM56G, ANY, ANY} -> pbn_b0_1_115200 (FL_BASE0, one port, base_baud
        # 115200, uart_offset 8, reg_shift 0); its quirk (pci_xircom_init) only sleeps
        # 100 ms, and pci_default_setup maps a memory BAR as UPIO_MEM (byte accesses).
        identity=Identity(vendor=0x115D, device=0x0101, subsystem_vendor=0x115D,
                          subsystem=0x0101, class_code=CLASS_SERIAL_16550),
        layout=Layout(reg_shift=0, io_width=1, clock_hz=1_843_200),
        linux_driver="8250_pci (drivers/tty/serial/8250/8250_pci.c, Xircom RBM56G entry, "
                     "board pbn_b0_1_115200)",
        verified="QEMU 11.1 vfio-user-pci + Debian 6.1 amd64 (q35) and arm64 (virt) "
                 "kernels (tests/integration/qemu_pci)",
    ),
    PciIdEntry(
        drivers=("ns16550",),
        # Titan 100: serial_pci_tbl entry {TITAN, TITAN_100, ANY, ANY} -> pbn_b0_1_921600
        # (FL_BASE0, one port, base_baud 921600, reg_shift 0); no quirk (the Titan quirks
        # are for the 400L/800L), so pci_default_setup: UPIO_MEM on a memory BAR.
        identity=Identity(vendor=0x14D2, device=0xA001, subsystem_vendor=0x14D2,
                          subsystem=0xA001, class_code=CLASS_SERIAL_16550),
        layout=Layout(reg_shift=0, io_width=1, clock_hz=14_745_600),
        linux_driver="8250_pci (drivers/tty/serial/8250/8250_pci.c, Titan 100 entry, "
                     "board pbn_b0_1_921600)",
        verified="QEMU 11.1 vfio-user-pci + Debian 6.1 amd64 kernel (q35) "
                 "(tests/integration/qemu_pci)",
    ),
    PciIdEntry(
        drivers=("cavium-octeon-spi",),
        # ThunderX SPI: spi-cavium-thunderx.c binds PCI_DEVICE(CAVIUM, 0xa00b) (vendor and
        # device only, so the class is not checked); its probe maps BAR0 and finds the
        # MPI block (spi-cavium.c: 64-bit CSRs through readq/writeq) at BAR0 + 0x1000,
        # and takes its input clock from the PCI function's firmware node (devm_clk_get:
        # the guest node needs a clock; platpass guests get fixed clocks). The MPI is
        # polled: INTx is never enabled.
        identity=Identity(vendor=0x177D, device=0xA00B, subsystem_vendor=0x177D,
                          subsystem=0xA00B, class_code=CLASS_SERIAL_BUS_OTHER),
        layout=Layout(reg_shift=0, io_width=8, clock_hz=None),
        linux_driver="spi-thunderx (drivers/spi/spi-cavium-thunderx.c, ID 177d:a00b, "
                     "registers at BAR0 + 0x1000)",
        verified="QEMU 11.1 vfio-user-pci + Debian 6.1 arm64 kernel (virt): spi-thunderx "
                 "binds, at25 probes the EEPROM child from platpass guest-dt's node "
                 "(tests/integration/qemu_pci/test_qemu_pci_spi.py)",
        bar0_offset=0x1000,
    ),
)

#: Families platpass supports that have no entry, and why (Linux 6.1 sources).
OTHER_FAMILIES: dict[str, str] = {
    "arm-pl011 / arm-sbsa-uart": "none exists: amba-pl011 binds AMBA/platform devices only",
    "arm-pl031 (rtc)": "none exists: rtc-pl031 is an AMBA driver only",
    "arm-pl061 (gpio)": "none exists: gpio-pl061 is an AMBA driver only",
    "arm-sp805 (watchdog)": "none exists: sp805_wdt is an AMBA driver only",
    "snps-dw-apb-uart": "exists, not tried: 8250_lpss/8250_mid bind Intel LPSS/MID IDs, "
                        "with 32-bit registers, fixed clocks and DesignWare DMA set-up",
    "snps-designware-i2c": "exists, not tried: i2c-designware-pcidrv binds Intel "
                           "Medfield/Merrifield/Baytrail and AMD IDs with per-ID clocks",
    "snps-dw-wdt / snps-dw-apb-gpio": "none exists in 6.1 (platform drivers only)",
    "other SoC UART/I2C/SPI/PWM/RTC/GPIO/watchdog IP (imx, rockchip, qcom, tegra, "
    "renesas, ti, allwinner, amlogic, marvell, cadence, broadcom)":
        "none exists: their Linux drivers are platform drivers only",
}


def bar0_offset(identity: Identity, table: tuple[PciIdEntry, ...] = PCI_ID_TABLE) -> int:
    """Where the table's entry for ``identity`` puts the registers inside BAR0 (0 for an
    identity outside the table: the user's own choice gets the plain layout)."""
    for entry in table:
        if entry.identity == identity:
            return entry.bar0_offset
    return 0


def _cell(node: DeviceNode, name: str) -> int | None:
    raw = node.properties.get(name)
    if raw is None or len(raw) != 4:
        return None
    return int.from_bytes(raw, "big")


def device_layout(node: DeviceNode, driver: object) -> Layout:
    """The device's layout as the platform driver reads it: ``reg-shift`` and
    ``reg-io-width`` from the driver (defaults 0 and 1), the clock from ``clock-frequency``
    or the first clock's rate (the order Linux's 8250_of uses)."""
    clock = _cell(node, "clock-frequency")
    if clock is None and node.clocks:
        clock = node.clocks[0].rate
    return Layout(reg_shift=int(getattr(driver, "reg_shift", 0)),
                  io_width=int(getattr(driver, "io_width", 1)), clock_hz=clock)


def _mismatch(entry: PciIdEntry, layout: Layout) -> str | None:
    want = entry.layout
    if want.reg_shift != layout.reg_shift or want.io_width != layout.io_width:
        return f"its driver expects {want}"
    if want.clock_hz is not None and layout.clock_hz != want.clock_hz:
        return f"its driver assumes a {want.clock_hz} Hz input clock"
    return None


def parse_pci_id(text: str) -> tuple[int, int] | None:
    """``auto`` -> None; ``VVVV:DDDD`` (hex) -> (vendor, device). ValueError otherwise."""
    if text == "auto":
        return None
    parts = text.split(":")
    if len(parts) != 2 or not all(1 <= len(p) <= 4 for p in parts):
        raise ValueError(f"PCI ID {text!r}: want auto or VVVV:DDDD (hex)")
    vendor, device = (int(p, 16) for p in parts)
    if vendor in (0x0000, 0xFFFF):
        raise ValueError(f"PCI ID {text!r}: vendor {vendor:#06x} is not a vendor")
    return vendor, device


def choose_identity(node: DeviceNode, driver: object, requested: str = "auto",
                    table: tuple[PciIdEntry, ...] = PCI_ID_TABLE) -> tuple[Identity, str]:
    """The identity to present and a one-line account of why.

    ``requested`` is ``auto`` (the first matching entry) or ``VVVV:DDDD``: an ID in the
    table must still match the layout; an ID outside it is the user's choice (class FFh,
    subsystem = the ID) and the account says no guest driver is known to bind it.

    Raises :class:`PciIdError` for an unparsable ID, or when no entry (or the entry for the
    requested ID) fits the device's driver and layout.
    """
    try:
        wanted = parse_pci_id(requested)
    except ValueError as err:
        raise PciIdError(str(err)) from err
    name = str(getattr(driver, "name", type(driver).__name__))
    layout = device_layout(node, driver)
    candidates = [e for e in table if wanted is None
                  or (e.identity.vendor, e.identity.device) == wanted]
    if wanted is not None and not candidates:
        vendor, device = wanted
        ident = Identity(vendor, device, vendor, device, CLASS_UNASSIGNED)
        return ident, (f"{ident} as asked (not in platpass's table: no guest driver is "
                       "known to bind it)")
    reasons = []
    for entry in candidates:
        if name not in entry.drivers:
            reasons.append(f"{entry.identity} is for {', '.join(entry.drivers)}")
            continue
        if wanted is None and not entry.verified:
            reasons.append(f"{entry.identity} is not verified")
            continue
        why = _mismatch(entry, layout)
        if why is None:
            return entry.identity, f"{entry.identity}: {entry.linux_driver}"
        reasons.append(f"{entry.identity} ({entry.linux_driver}): {why}")
    detail = "; ".join(reasons) if reasons else f"no entry for the {name} driver"
    raise PciIdError(f"{node.path}: no PCI identity fits {name} with {layout}: {detail}")
