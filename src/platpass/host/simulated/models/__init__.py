"""Register-level models of real IP blocks, written from their public reference manuals.

Each model is pure device logic driven by register accesses, a model clock and host-side
inputs; :class:`platpass.host.simulated.backend.SimulatedBackend` puts one behind the
backend interface.
"""

from __future__ import annotations

from platpass.host.simulated.models.base import DeviceModel
from platpass.host.simulated.models.ns16550 import Ns16550
from platpass.host.simulated.models.pl011 import Pl011
from platpass.host.simulated.models.pl031 import Pl031
from platpass.host.simulated.models.pl061 import Pl061
from platpass.host.simulated.models.sp805 import Sp805

__all__ = ["DeviceModel", "Ns16550", "Pl011", "Pl031", "Pl061", "Sp805"]
