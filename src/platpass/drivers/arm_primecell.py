"""What the ARM PrimeCell drivers (PL011, PL031, PL061, SP805) share: the guest's view.

A board may describe a PrimeCell without ``"arm,primecell"`` - that is what lets UIO's
platform driver bind it on the host. A Linux guest, though, only has AMBA drivers for these
IPs (amba-pl011, rtc-pl031, gpio-pl061, sp805_wdt): it binds them on the amba bus, which
wants ``"arm,primecell"`` in ``compatible`` and an ``apb_pclk`` clock, and then reads the
PrimeCell ID registers (which the device, real or simulated, answers). So the guest node
gets ``"arm,primecell"`` back whenever the host node names an ``apb_pclk`` clock (the guest
transform turns it into a fixed clock). Without one it is left alone: a primecell without
``apb_pclk`` would fail the guest's amba probe anyway.
"""

from __future__ import annotations

from collections.abc import Mapping

from platpass.drivers.common import PlatformDriver

PRIMECELL = "arm,primecell"


class PrimeCellDriver(PlatformDriver):
    """Base of the register-level PrimeCell drivers (no DRIVERS here: not a family)."""

    def guest_properties(self, properties: Mapping[str, bytes]) -> dict[str, bytes]:
        """Add ``"arm,primecell"`` to the guest's ``compatible`` when the guest's amba bus
        can probe the device (the host node has an ``apb_pclk`` clock)."""
        result = dict(properties)
        raw = result.get("compatible")
        if raw is None or not any(clock.name == "apb_pclk" for clock in self.node.clocks):
            return result
        entries = [entry for entry in raw.split(b"\0") if entry]
        if PRIMECELL.encode() not in entries:
            result["compatible"] = b"\0".join([*entries, PRIMECELL.encode()]) + b"\0"
        return result
