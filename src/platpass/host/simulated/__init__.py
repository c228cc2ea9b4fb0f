"""The simulated host backend: register-level models behind the backend interface.

:class:`SimulatedBackend` keeps a model's registers in a memfd (mappable like real MMIO)
and runs side effects on trapped accesses, timers and host-side inputs;
:mod:`platpass.host.simulated.board` opens the models of the simulated board by
``compatible``.
"""

from __future__ import annotations

from platpass.host.simulated.backend import SimulatedBackend
from platpass.host.simulated.clock import ManualClock, ModelClock, ReactorClock

__all__ = ["ManualClock", "ModelClock", "ReactorClock", "SimulatedBackend"]
