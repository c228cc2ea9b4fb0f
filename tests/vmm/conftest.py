"""Fixtures for the KVM client tests: skip (with the reason) only where /dev/kvm is absent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
