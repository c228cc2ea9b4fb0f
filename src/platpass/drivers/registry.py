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

from platpass.drivers.common import PlatformDriver
from platpass.errors import DriverError

ENTRY_POINT_GROUP = "platpass.drivers"


class DriverRegistry:
    """Maps compatible strings to driver classes; refuses two drivers for one string."""

    def __init__(self, drivers: Iterable[type[PlatformDriver]] = ()) -> None:
        self._by_compatible: dict[str, type[PlatformDriver]] = {}
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
        """The driver for the most specific (first-listed) compatible that has one."""
        for entry in compatible:
            driver = self._by_compatible.get(entry)
            if driver is not None:
                return driver
        return None

    @property
    def drivers(self) -> tuple[type[PlatformDriver], ...]:
        """Every registered driver class, once each, in registration order."""
        return tuple(dict.fromkeys(self._by_compatible.values()))

    @property
    def compatibles(self) -> tuple[str, ...]:
        """Every claimed compatible string."""
        return tuple(self._by_compatible)


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
