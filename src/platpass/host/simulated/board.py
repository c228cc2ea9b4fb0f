"""The simulated board: its device tree, and a model behind each of its simple devices.

The board (``platpass/boards/sim-board.dts``, shipped in the package) is an arm64 SoC with
two PL011s, a PL031, a PL061, an SP805 and a 16550 as *platform* devices, plus bus masters
the scanner must refuse. It is compiled with ``dtc`` on first use and cached per process.
:func:`open_sim_backend` opens the model that matches a node's ``compatible``, sized from
the node's ``reg`` and clocked from its ``clocks``; the model's host-side handles (UART TX
bytes and RX input, GPIO pins, RTC time, watchdog reset output) hang off
``backend.model``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from platpass.errors import HostError
from platpass.firmware.devicetree import DeviceTree, compile_dts, load_blob
from platpass.firmware.model import DeviceNode
from platpass.firmware.rawtree import RawNode
from platpass.firmware.resolve import string_list
from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ModelClock, ReactorClock
from platpass.host.simulated.models.base import DeviceModel
from platpass.host.simulated.models.ns16550 import Ns16550
from platpass.host.simulated.models.octeon_spi import OcteonSpi, SpiEeprom
from platpass.host.simulated.models.pl011 import Pl011
from platpass.host.simulated.models.pl031 import Pl031
from platpass.host.simulated.models.pl061 import Pl061
from platpass.host.simulated.models.sp805 import Sp805
from platpass.reactor import Reactor

BOARD_DTS = "sim-board.dts"

_log = logging.getLogger(__name__)


def board_dts_path(name: str = BOARD_DTS) -> Path:
    """Path of a simulated board's device-tree source shipped inside the package
    (``platpass/boards/``): the board by default, or ``sim-pci-uart.dts`` and
    ``sim-pci-spi.dts``, the boards whose devices are served as PCI functions."""
    path = Path(str(resources.files("platpass").joinpath("boards", name)))
    if not path.is_file():
        raise HostError(f"simulated board source missing: {path}")
    return path


@functools.cache
def board_dtb() -> bytes:
    """The board compiled to a flattened device tree (``dtc``, once per process).

    Raises :class:`~platpass.errors.DeviceTreeLoadError` when dtc is missing or fails.
    """
    return compile_dts(board_dts_path())


def load_board() -> DeviceTree:
    """The board as a loaded :class:`~platpass.firmware.devicetree.DeviceTree`."""
    return load_blob(board_dtb(), str(board_dts_path()))


# -- models by compatible ----------------------------------------------------------------

ModelFactory = Callable[[DeviceNode, ModelClock], DeviceModel]


def _clock_rate(node: DeviceNode, name: str | None = None) -> int | None:
    """Rate of the clock called ``name`` (or the first clock) when firmware states it."""
    for clock in node.clocks:
        if name is None or clock.name == name:
            return clock.rate
    return node.clocks[0].rate if node.clocks else None


def _u32_property(node: DeviceNode, name: str, default: int) -> int:
    raw = node.properties.get(name)
    if raw is None:
        return default
    if len(raw) != 4:
        raise HostError(f"{node.path}: property {name!r} is not one cell")
    return int.from_bytes(raw, "big")


def _pl011(node: DeviceNode, clock: ModelClock) -> DeviceModel:
    return Pl011(clock, uartclk=_clock_rate(node, "uartclk"))


def _pl031(node: DeviceNode, clock: ModelClock) -> DeviceModel:
    return Pl031(clock)


def _pl061(node: DeviceNode, clock: ModelClock) -> DeviceModel:
    return Pl061(clock)


def _sp805(node: DeviceNode, clock: ModelClock) -> DeviceModel:
    return Sp805(clock, rate=_clock_rate(node, "wdog_clk"))


def _ns16550(node: DeviceNode, clock: ModelClock) -> DeviceModel:
    rate = _u32_property(node, "clock-frequency", 0) or _clock_rate(node)
    try:
        return Ns16550(clock, reg_shift=_u32_property(node, "reg-shift", 0),
                       reg_io_width=_u32_property(node, "reg-io-width", 1), clock_rate=rate)
    except ValueError as err:
        raise HostError(f"{node.path}: {err}") from err


def _octeon_spi(node: DeviceNode, clock: ModelClock) -> DeviceModel:
    return OcteonSpi(clock)


MODEL_FACTORIES: dict[str, ModelFactory] = {
    "cavium,octeon-3010-spi": _octeon_spi,
    "arm,pl011": _pl011,
    "arm,pl031": _pl031,
    "arm,pl061": _pl061,
    "arm,sp805": _sp805,
    "ns16550a": _ns16550,
    "ns16550": _ns16550,
    "ns8250": _ns16550,
    "fsl,ns16550": _ns16550,
}


def model_for(node: DeviceNode, clock: ModelClock) -> DeviceModel:
    """The model for ``node``'s most specific modelled compatible; HostError if none."""
    for compatible in node.compatible:
        factory = MODEL_FACTORIES.get(compatible)
        if factory is not None:
            return factory(node, clock)
    raise HostError(f"{node.path}: no simulated model for compatible {list(node.compatible)}")


def open_sim_backend(node: DeviceNode, reactor: Reactor,
                     clock: ModelClock | None = None, *,
                     memfd: int | None = None) -> SimulatedBackend:
    """A :class:`SimulatedBackend` for ``node`` running on ``reactor``'s clock (or
    ``clock``, e.g. a :class:`~platpass.host.simulated.clock.ManualClock` in tests), its
    mirror in ``memfd`` when given (the backend owns it from then on)."""
    try:
        if len(node.regions) != 1:
            raise HostError(f"{node.path}: simulated devices have exactly one region, "
                            f"firmware gives {len(node.regions)}")
        model = model_for(node, clock or ReactorClock(reactor))
    except BaseException:
        if memfd is not None:
            os.close(memfd)
        raise
    return SimulatedBackend(model, node.regions[0].size, memfd=memfd)


# -- devices on a modelled bus -----------------------------------------------------------

#: Compatibles of SPI EEPROMs the AT25 model stands for (Linux's at25 binds these).
AT25_COMPATIBLES = ("atmel,at25",)


def _raw_u32(raw: RawNode, *names: str) -> int | None:
    """The first of ``names`` that the node has, as one cell (HostError if malformed)."""
    for name in names:
        value = raw.props.get(name)
        if value is None:
            continue
        if len(value) != 4:
            raise HostError(f"{raw.path}: property {name!r} is not one cell")
        return int.from_bytes(value, "big")
    return None


def spi_eeprom_for(raw: RawNode, clock: ModelClock) -> SpiEeprom:
    """An AT25 model sized the way Linux's at25 reads the node: ``size``, ``pagesize``,
    ``address-width`` (or the older ``at25,byte-len``, ``at25,page-size``,
    ``at25,addr-mode``). HostError when the node does not say."""
    size = _raw_u32(raw, "size", "at25,byte-len")
    page = _raw_u32(raw, "pagesize", "at25,page-size")
    width = _raw_u32(raw, "address-width")
    if width is None:
        mode = _raw_u32(raw, "at25,addr-mode")
        width = {1: 8, 2: 16, 4: 24}.get(mode or 0)
    if size is None or page is None or width not in (8, 16, 24):
        raise HostError(f"{raw.path}: an AT25 node needs size, pagesize and address-width "
                        "(8, 16 or 24)")
    try:
        return SpiEeprom(clock, size, page, width // 8)
    except ValueError as err:
        raise HostError(f"{raw.path}: {err}") from err


def populate_bus(backend: SimulatedBackend, subtree: Sequence[RawNode]) -> None:
    """Put models of the devices firmware lists on a modelled bus: an AT25 EEPROM on the
    chip select its ``reg`` names. Enabled children only (a disabled one is not on the
    board); a child no model stands for is logged and left off the bus, where nothing
    answers it (MISO floats high), as with an empty socket. HostError for a malformed
    child the model does stand for, or two on one chip select."""
    model = backend.model
    if not isinstance(model, OcteonSpi) or not subtree:
        return
    device = subtree[0].parent  # the subtree is in blob order: its first node is a child
    for raw in subtree:
        if raw.parent is not device:
            continue
        status = raw.props.get("status", b"okay").rstrip(b"\0")
        if status not in (b"okay", b"ok"):
            continue
        compatibles = string_list(raw.props.get("compatible"))
        if not any(c in AT25_COMPATIBLES for c in compatibles):
            _log.warning("%s: no simulated model for %s; nothing answers on its chip "
                         "select", raw.path, list(compatibles))
            continue
        cs = _raw_u32(raw, "reg")
        if cs is None or cs >= 4:
            raise HostError(f"{raw.path}: reg must be one chip select 0-3")
        if cs in model.targets:
            raise HostError(f"{raw.path}: chip select {cs} is already taken")
        model.targets[cs] = spi_eeprom_for(raw, model.clock)
