"""Fixtures for the KVM client tests: skip (with the reason) only where /dev/kvm is absent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from platpass.drivers.common import PlatformDriver
from platpass.drivers.registry import DriverRegistry, default_registry
from platpass.vmm.kvm import Vm, kvm_unavailable_reason

KVM_REASON = kvm_unavailable_reason()
needs_kvm = pytest.mark.skipif(KVM_REASON is not None, reason=KVM_REASON or "")


@pytest.fixture
def vm() -> Iterator[Vm]:
    """A fresh VM with 2 MiB of RAM and the in-kernel irqchip."""
    if KVM_REASON is not None:
        pytest.skip(KVM_REASON)
    machine = Vm()
    try:
        yield machine
    finally:
        machine.close()


@pytest.fixture
def sim_registry() -> DriverRegistry:
    """The default driver registry; until the PL011/PL031 register-level drivers are in
    it, a bare declaration stands in for them (no traps, default reset)."""
    registry = default_registry()
    for compatible in ("arm,pl011", "arm,pl031"):
        if registry.match((compatible,)) is None:
            registry.register(type(f"Bare_{compatible[4:]}", (PlatformDriver,), {
                "name": f"bare-{compatible}", "compatibles": (compatible,),
                "family": "test", "evidence": "stand-in until the real driver lands"}))
    return registry
