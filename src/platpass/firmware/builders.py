"""Fast constructors for the frozen model objects the resolver makes by the hundred thousand.

A frozen slots dataclass's generated ``__init__`` sets every field through
``object.__setattr__`` (a name lookup through the type per field); a scan of Debian's 577
DTBs builds ~400k such objects and spent a sixth of its time there. Writing the slots
through their member descriptors builds the identical object in about half the time.

The field lists are checked against the dataclasses at import: if the model gains or
reorders a field, importing this module fails loudly instead of building half-filled
objects. ``tests/firmware/test_builders.py`` checks equality with the real constructors.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from platpass.firmware.model import Clock, DeviceNode, Interrupt, MmioRange

__all__ = ["new_clock", "new_device_node", "new_interrupt", "new_mmio_range"]


def _setters(cls: type, names: tuple[str, ...]) -> tuple[Any, ...]:
    actual = tuple(f.name for f in fields(cls))
    if actual != names:
        raise ImportError(f"{cls.__name__} fields are {actual}, builders expect {names}")
    return tuple(getattr(cls, name).__set__ for name in names)


_new = object.__new__

_r_address, _r_size, _r_name = _setters(MmioRange, ("address", "size", "name"))


def new_mmio_range(address: int, size: int, name: str | None) -> MmioRange:
    """``MmioRange(address, size, name)``."""
    obj = _new(MmioRange)
    _r_address(obj, address)
    _r_size(obj, size)
    _r_name(obj, name)
    return obj


(_i_controller, _i_specifier, _i_type, _i_number, _i_trigger, _i_name) = _setters(
    Interrupt, ("controller", "specifier", "type", "number", "trigger", "name"))


def new_interrupt(controller: str, specifier: tuple[int, ...], type: Any, number: int,
                  trigger: Any, name: str | None) -> Interrupt:
    """``Interrupt(controller, specifier, type, number, trigger, name)``."""
    obj = _new(Interrupt)
    _i_controller(obj, controller)
    _i_specifier(obj, specifier)
    _i_type(obj, type)
    _i_number(obj, number)
    _i_trigger(obj, trigger)
    _i_name(obj, name)
    return obj


_c_provider, _c_specifier, _c_name, _c_rate = _setters(
    Clock, ("provider", "specifier", "name", "rate"))


def new_clock(provider: str, specifier: tuple[int, ...], name: str | None,
              rate: int | None) -> Clock:
    """``Clock(provider, specifier, name, rate)``."""
    obj = _new(Clock)
    _c_provider(obj, provider)
    _c_specifier(obj, specifier)
    _c_name(obj, name)
    _c_rate(obj, rate)
    return obj


(_d_path, _d_compatible, _d_status, _d_is_mmio, _d_regions, _d_interrupts, _d_clocks,
 _d_properties, _d_problems, _d_phandle) = _setters(
    DeviceNode, ("path", "compatible", "status", "is_mmio", "regions", "interrupts", "clocks",
                 "properties", "problems", "phandle"))


def new_device_node(path: str, compatible: tuple[str, ...], status: str, is_mmio: bool,
                    regions: tuple[MmioRange, ...], interrupts: tuple[Interrupt, ...],
                    clocks: tuple[Clock, ...], properties: dict[str, bytes],
                    problems: tuple[str, ...], phandle: int | None) -> DeviceNode:
    """``DeviceNode(...)`` with every field given, in declaration order."""
    obj = _new(DeviceNode)
    _d_path(obj, path)
    _d_compatible(obj, compatible)
    _d_status(obj, status)
    _d_is_mmio(obj, is_mmio)
    _d_regions(obj, regions)
    _d_interrupts(obj, interrupts)
    _d_clocks(obj, clocks)
    _d_properties(obj, properties)
    _d_problems(obj, problems)
    _d_phandle(obj, phandle)
    return obj
