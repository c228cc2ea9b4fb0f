"""Driver registry: ``compatible`` string -> driver class.

Built-in drivers are listed in :data:`platpass.drivers.BUILTIN_MODULES`; third parties add
theirs through the entry-point group ``platpass.drivers`` (each entry point names a driver
class or a module with a ``DRIVERS`` tuple), without forking platpass.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points
from types import ModuleType

from platpass.drivers.common import PlatformDriver, Trap
from platpass.errors import DriverError

ENTRY_POINT_GROUP = "platpass.drivers"


class DriverRegistry:
    """Maps compatible strings to driver classes; refuses two drivers for one string."""

    def __init__(self, drivers: Iterable[type[PlatformDriver]] = ()) -> None:
        self._by_compatible: dict[str, type[PlatformDriver]] = {}
        self._combined: dict[tuple[type[PlatformDriver], ...], type[PlatformDriver]] = {}
        for driver in drivers:
            self.register(driver)

    def register(self, driver: type[PlatformDriver]) -> None:
        """Add ``driver``; raises :class:`DriverError` on a clash or a missing declaration."""
        for attr in ("name", "compatibles", "family", "evidence"):
            if not getattr(driver, attr, None):
                raise DriverError(f"driver {driver.__qualname__} does not declare {attr!r}")
        for compatible in driver.compatibles:
            other = self._by_compatible.get(compatible)
            if other is not None and other is not driver:
                raise DriverError(
                    f"compatible {compatible!r} claimed by both {other.name} and {driver.name}"
                )
            self._by_compatible[compatible] = driver

    def match(self, compatible: Sequence[str]) -> type[PlatformDriver] | None:
        """The driver for the most specific (first-listed) compatible that has one.

        A node's full list is honoured: when a less specific compatible has a driver of its
        own (LX2160A's ``"arm,sbsa-uart", "arm,pl011"``), every trap that driver would set
        is kept (a subclass of the first driver with the extra traps, read-as-zero and
        writes ignored unless the first driver handles a trap of that name), and a driver
        declaring the IP a bus master wins. A node never loses a trap by being described
        more precisely.
        """
        primary: type[PlatformDriver] | None = None
        others: list[type[PlatformDriver]] = []
        for entry in compatible:
            driver = self._by_compatible.get(entry)
            if driver is None:
                continue
            if primary is None:
                primary = driver
            elif driver is not primary and driver not in others:
                others.append(driver)
        if primary is None or not others:
            return primary
        key = (primary, *others)
        combined = self._combined.get(key)
        if combined is None:
            combined = self._combined[key] = _with_fallback_traps(primary, others)
        return combined

    @property
    def drivers(self) -> tuple[type[PlatformDriver], ...]:
        """Every registered driver class, once each, in registration order."""
        return tuple(dict.fromkeys(self._by_compatible.values()))

    @property
    def compatibles(self) -> tuple[str, ...]:
        """Every claimed compatible string."""
        return tuple(self._by_compatible)


def _with_fallback_traps(primary: type[PlatformDriver],
                         others: Sequence[type[PlatformDriver]]) -> type[PlatformDriver]:
    """``primary``, or a subclass of it that also holds the traps (and the bus-master
    declaration) of the drivers of a node's less specific compatibles."""

    def missing(have: tuple[Trap, ...], extra: Iterable[Trap]) -> tuple[Trap, ...]:
        out: list[Trap] = []
        for trap in extra:
            if not any(h.region == trap.region and h.offset <= trap.offset
                       and trap.offset + trap.size <= h.offset + h.size
                       for h in (*have, *out)):
                out.append(trap)
        return tuple(out)

    traps = missing(primary.traps, (t for o in others for t in o.traps))
    dma_traps = missing(primary.traps + primary.dma_traps + traps,
                        (t for o in others for t in o.dma_traps))
    masters = [o for o in others if not o.cannot_master_bus]
    if not (traps or dma_traps or masters):
        return primary
    names = ", ".join(o.name for o in others)
    evidence = primary.evidence + f"; the node also lists compatibles of {names}"
    if traps or dma_traps:
        evidence += ", whose traps are kept: " + ", ".join(t.name for t in traps + dma_traps)
    if masters:
        evidence += "; " + ", ".join(o.name for o in masters) + " declares a bus master"
    return type(primary.__name__, (primary,), {
        "__module__": primary.__module__,
        "__qualname__": f"{primary.__qualname__}[+{names}]",
        "__doc__": primary.__doc__,
        "traps": primary.traps + traps,
        "dma_traps": primary.dma_traps + dma_traps,
        "cannot_master_bus": primary.cannot_master_bus and not masters,
        "evidence": evidence,
    })


def drivers_of_module(module: ModuleType) -> tuple[type[PlatformDriver], ...]:
    """The ``DRIVERS`` tuple a driver module exports."""
    drivers = getattr(module, "DRIVERS", None)
    if drivers is None:
        raise DriverError(f"driver module {module.__name__} has no DRIVERS tuple")
    return tuple(drivers)


def load_entry_points(registry: DriverRegistry, group: str = ENTRY_POINT_GROUP) -> None:
    """Register third-party drivers advertised under ``group``."""
    for ep in entry_points(group=group):
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin must not take platpass down
            raise DriverError(f"cannot load driver entry point {ep.name!r}: {err}") from err
        if isinstance(obj, ModuleType):
            for driver in drivers_of_module(obj):
                registry.register(driver)
        elif isinstance(obj, type) and issubclass(obj, PlatformDriver):
            registry.register(obj)
        else:
            raise DriverError(f"entry point {ep.name!r} is neither a driver nor a module")


def default_registry(*, plugins: bool = True) -> DriverRegistry:
    """A registry holding every built-in driver and, unless ``plugins`` is False, plugins."""
    from platpass.drivers import BUILTIN_MODULES

    registry = DriverRegistry()
    for name in BUILTIN_MODULES:
        module = importlib.import_module(f"platpass.drivers.{name}")
        for driver in drivers_of_module(module):
            registry.register(driver)
    if plugins:
        load_entry_points(registry)
    return registry
