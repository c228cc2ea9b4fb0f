"""Checks shared by the KVM tests that need to know how this host's KVM behaves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from platpass.vfio_device.device import VfioDevice
from platpass.vmm.passthrough import ReactorThread

#: This host's KVM is PVM (kvm_pvm): it completes a level interrupt when it injects it,
#: not at the guest's EOI, so its resample eventfd can fire before the guest's ISR acks.
PVM = Path("/sys/module/kvm_pvm").exists()


def check_mapped_ack(thread: ReactorThread, device: VfioDevice, backend: Any) -> None:
    """After a guest took the PL031 alarm, acked it with a mapped RTCICR write and EOI'd,
    and the resample-driven unmask has reached the device: the line is low and nothing was
    delivered again (the unmask took the mapped ack over before its re-fire check).

    On PVM the resample fires at injection, before the ISR's ack: the unmask then finds
    the line still asserted and re-fires (as it would with a trapped ack), and the mapped
    ack is taken over by the RTC's next tick instead - within a second.
    """
    if PVM:
        assert thread.run_until(lambda: not backend.line(0), 1.5), "ack never taken over"
        assert thread.call(lambda: device.stats.irqs[0].delivered) in (1, 2)
        assert not thread.call(lambda: backend.mapped_writes_pending)
        return
    assert not thread.call(lambda: backend.line(0))
    time.sleep(0.2)
    assert thread.call(lambda: device.stats.irqs[0].delivered) == 1
